"""sink: take each camera's results in frame order, smooth each track's emotion, write JSON
lines, draw the results on their frames, serve the viewer.

One input: capture's results link, one message per frame in order, then one end-of-stream
per camera. A results message carries its frame's pixels only while the sink subscribes to
``frame.<camera>.`` (``Sink.topics``: the viewer, --record or --show use the camera), so
frames that are never drawn are never sent.

Exits by itself (0) once every configured camera has ended; in lossless mode with a frame
missing its line (capture gave it up) it exits EXIT_INCOMPLETE, with a source that had frames
it could not read EXIT_SOURCE_INCOMPLETE (every frame read has its line).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import zmq
from prometheus_client import CollectorRegistry

from emopipe import bus, curve, messages, service
from emopipe import metrics as metrics_mod
from emopipe.bus import Subscriber, decode_batch
from emopipe.config import Config, resolve_path
from emopipe.messages import EndOfStream, Message, Results
from emopipe.metrics import Metrics
from emopipe.throttle import ThrottledLog
from services.sink.camera import CameraState
from services.sink.events import EVENTS, TRACKS, LineWriter, event, open_writer
from services.sink.outputs import Outputs, recording_fps
from services.sink.progress import Progress
from services.sink.render import annotate
from services.sink.smoothing import Smoother
from services.sink.viewer import FrameStore, Viewer

log = logging.getLogger("emopipe.sink")
EXIT_INCOMPLETE = 3
EXIT_SOURCE_INCOMPLETE = 4  # every frame read has its line, but a file had frames that could not be read
EXIT_OUTPUT_FAILED = 5  # every line written, but --record or --show failed and was stopped
#: lines that could not be written: counted each, logged now and then
write_errors = ThrottledLog(log)


class WriteError(OSError):
    """Lossless: a JSON line could not be written (a full disk); the message names the file."""


class Sink:
    def __init__(
        self,
        cfg: Config,
        metrics: Metrics,
        events: LineWriter,
        outputs: Outputs,
        tracks: LineWriter | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.cfg = cfg
        self.progress = progress
        self.metrics = metrics
        self.events = events
        self.tracks = tracks or LineWriter(None)
        self.smoother = Smoother(cfg.sink.smooth_s, cfg.detect.track_timeout_s)
        self.outputs = outputs
        self.cameras = cfg.sink.cameras or cfg.cameras
        self.states = {c: CameraState() for c in self.cameras}
        self.unread: dict[str, int] = {}  # per camera: frames its file had that could not be read

    def on_message(self, msg: Message, received: float) -> None:
        state = self.states.setdefault(msg.camera, CameraState())
        if isinstance(msg, EndOfStream):
            if state.produced is None:
                log.info("camera %s: ended after %d frames", msg.camera, msg.seq)
            if msg.unread:
                self.unread[msg.camera] = msg.unread
            state.produced = msg.seq
        elif isinstance(msg, Results):
            self.metrics.transport_delay.labels(stage="sink", camera=msg.camera).observe(max(0.0, received - msg.sent))
            self.emit(msg)
            state.written += 1

    def topics(self) -> list[bytes]:
        """What to take from capture: results and end-of-stream, and a camera's pixels
        (``frame.<camera>.``) only while something shows or records it (the viewer: until it
        has a first frame, then while a stream is open or a snapshot was asked for), so 921 KB
        a frame are not sent for nothing. With no camera listed, every camera's pixels if
        anything draws at all."""
        topics = bus.topics_for(["results", "eos"], self.cfg.sink.cameras)
        if not self.cameras:
            return [*topics, messages.topic("frame")] if self.outputs.drawing else topics
        return topics + [messages.topic("frame", c) for c in self.cameras if self.outputs.wanted(c)]

    def emit(self, res: Results) -> None:
        start = time.perf_counter()
        if res.labels != self.smoother.labels:  # every label exists (at zero) once the model's are known
            for camera in self.cameras:
                for label in res.labels:
                    self.metrics.predictions.labels(camera=camera, emotion=label)
        smoothed = self.smoother.update(res)
        self.write(self.events, event(res, smoothed), res.labels)
        if self.progress is not None:
            self.progress.written(res.camera, len(res.faces), res.ts)
        if self.outputs.store is not None:
            self.outputs.store.board.record(res, smoothed)
        for face in smoothed:
            self.metrics.predictions.labels(camera=res.camera, emotion=face.emotion).inc()
        self.write_ended(res.camera, res.ts)
        if res.frame is not None and self.outputs.wanted(res.camera):
            self.outputs.show(res.camera, annotate(res.frame.image, res, smoothed))
        self.metrics.end_to_end_latency.labels(camera=res.camera).observe(max(0.0, time.time() - (res.wall or res.ts)))
        self.metrics.stage_latency.labels(stage="sink", camera=res.camera).observe(time.perf_counter() - start)
        self.metrics.frames_processed.labels(stage="sink", camera=res.camera).inc()

    def write(self, writer: LineWriter, line: dict[str, Any], labels: tuple[str, ...]) -> None:
        """A line that cannot be written (a full disk) is counted; live, the pipeline goes on
        (logged now and then); lossless, the sink stops naming the file (WriteError)."""
        try:
            writer.write(line, labels)
        except OSError as exc:
            self.metrics.frames_dropped.labels(stage="sink", reason="write_error").inc()
            if self.cfg.lossless:
                raise WriteError(f"{exc.strerror}; stopping: this run would miss lines") from exc
            write_errors.event(str(writer.path), logging.ERROR, "%s; the line is lost, going on (live)", exc.strerror)

    def write_ended(self, camera: str, now: float | None) -> None:
        for state in self.smoother.ended(camera, now):
            self.write(self.tracks, state.summary(self.smoother.labels), self.smoother.labels)
            if self.outputs.store is not None:
                self.outputs.store.board.end_track(camera, state.track)
            if self.progress is not None:
                self.progress.track_ended(camera)

    def end_tracks(self) -> None:
        """Every camera that ended: its tracks have ended too."""
        for camera, state in self.states.items():
            if state.done:
                self.write_ended(camera, None)

    def finished(self) -> bool:
        """Every expected camera ended (only when all sources end): its end-of-stream follows its last results."""
        return self.cfg.all_sources_end and bool(self.cameras) and all(self.states[c].done for c in self.cameras)

    def exit_code(self) -> int:
        if self.cfg.lossless:
            incomplete = {c: (s.written, s.produced) for c, s in self.states.items() if not s.complete}
            if incomplete:
                log.error("frames without their line (written, produced): %s", incomplete)
                return EXIT_INCOMPLETE
        if self.unread:
            log.error("files with frames that could not be read (every frame read has its line): %s", self.unread)
            return EXIT_SOURCE_INCOMPLETE
        if self.outputs.failed:
            log.error("outputs that failed and were stopped (every line was written): %s", self.outputs.failed)
            return EXIT_OUTPUT_FAILED
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    cfg, stop = service.setup("sink", argv)
    cameras = cfg.sink.cameras or cfg.cameras
    metrics = metrics_mod.create(CollectorRegistry(), "sink", cameras)
    viewer: Viewer | None = None
    store: FrameStore | None = None
    with service.starting("sink"):
        metrics_mod.serve(metrics, cfg.sink.metrics_port, cfg.pipeline.metrics_host)
        events = open_writer(resolve_path(cfg.sink.events) if cfg.sink.events else None, EVENTS)
        tracks = open_writer(resolve_path(cfg.sink.tracks) if cfg.sink.tracks else None, TRACKS)
        if cfg.viewer.port:
            store = FrameStore(cameras)
            viewer = Viewer(store, cfg.viewer.host, cfg.viewer.port, cfg.viewer.max_clients, metrics.registry)
            viewer.start()
            log.info("viewer on %s", viewer.url)
        fps = (
            {s.id: recording_fps(s, cfg.capture, cfg.sink.record_fps) for s in cfg.sources if s.id in cameras}
            if cfg.sink.record
            else {}
        )
        outputs = Outputs(cfg.sink, cameras, store, fps)
    ctx = zmq.Context()
    hwm = cfg.bus.lossless_hwm if cfg.lossless else cfg.bus.live_hwm * 4
    progress = Progress([s for s in cfg.sources if s.id in cameras], cfg.sink.progress_s, media_time=cfg.lossless)
    sink = Sink(cfg, metrics, events, outputs, tracks, progress)
    with service.starting("sink"):
        keys = curve.load(cfg.curve.keys)
        # subscribed to the pixels from the start: a lossless run's first frames are recorded too
        results = bus.Subscriber(
            ctx, cfg.endpoints.results, sink.topics(), hwm, cfg.bus.max_message_mb, keys=keys, link="results"
        )
    try:
        try:
            code = run(sink, results, stop)
            for camera in sink.states:  # stopped or ended: every track still open ends here
                sink.write_ended(camera, None)
        except WriteError as exc:
            log.error("%s", exc)
            code = service.EXIT_CONFIG  # not restarted: the disk is still full
        finally:
            tracks.close()
            progress.close()
            interrupted = cfg.all_sources_end and stop.is_set() and not sink.finished()
            summary = progress.summary(outputs.paths(events.path, tracks.path), interrupted, sink.unread)
            print(summary, flush=True)
        return code
    finally:
        results.close(linger=0)
        ctx.term()
        events.close()
        outputs.close()
        if viewer is not None:
            viewer.close()


def run(sink: Sink, results: Subscriber, stop: threading.Event) -> int:
    while not stop.is_set():
        results.set_topics(sink.topics())
        raw = results.receive(100)
        received = time.time()
        for msg in decode_batch("sink", raw, Results, sink.metrics):
            sink.on_message(msg, received)
        sink.end_tracks()
        if sink.finished():
            log.info("every camera ended; lines: %s", {c: s.written for c, s in sink.states.items()})
            return sink.exit_code()
    return 0
