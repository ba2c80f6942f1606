"""capture's hub: hands its cameras' work to the detect and classify workers and sends
each camera's results on to the sink in frame order, one message per frame.

Capture owns each frame until it is answered, so the lossless promise (every frame gets
exactly one line, whichever worker dies) is kept in one place, and the sink gets one
ordered stream per camera (nothing to join):

    frame ──▶ detect pool (sticky by camera) ──▶ faces ──▶ classify pool (least busy)
          ──▶ results (+ the frame's pixels, if the sink asked), per camera in frame order
          ──▶ end-of-stream once the camera's last frame is out ──▶ sink

The workers connect: ``endpoints.frames`` takes detect workers, ``endpoints.faces``
classify workers, and ``endpoints.results`` the sink. The sink asks for a camera's pixels
by subscribing to ``frame.<camera>.`` there as well (while something shows or records the
camera); then the hub keeps each frame's encoded parts from ``frame`` until its results go
out (or it is given up) and sends them after the results (``messages.with_frame``). Lossless,
what it keeps is bounded by the window that bounds the frames on their way
(``max_open`` a camera, ``room``); live, by the pools' timeouts and newest-wins. A camera's
track ids are the hub's own (a camera that moves to another detect worker starts new
tracks there; ids never repeat).

A detect worker on capture's host (its shared memory is capture's: ``emopipe/shm.py``) is handed
a frame as a reference to its copy in shared memory, not its pixels (``shared.py``).
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from emopipe import messages
from emopipe.bus import Publisher
from emopipe.config import Config
from emopipe.messages import EndOfStream, Faces, Frame
from emopipe.metrics import Metrics
from emopipe.workpool import protocol
from emopipe.workpool.broker import Answer, Broker, Given
from services.capture.shared import SharedFrames

log = logging.getLogger("emopipe.capture")
#: track ids kept per camera and worker, and workers per camera (old tracks have ended)
MAX_TRACK_IDS = 256
MAX_WORKER_MAPS = 4


class Hub:
    def __init__(self, pools: Sequence[Broker], results: Publisher, cfg: Config, metrics: Metrics) -> None:
        """``pools``: one broker per pool stage, in the order of ``emopipe.topology``."""
        self.lossless = cfg.lossless
        self.pools = list(pools)
        self.results = results
        self.jpeg_quality = cfg.bus.frames_jpeg_quality  # frames JPEG-compressed on the bus (between hosts)
        self.metrics = metrics
        #: lossless: frames of a camera on their way at most (back-pressure reaches the source)
        self.max_open = protocol.LOSSLESS_OPEN
        self.open: dict[str, deque[int]] = {}  # seqs handed to detect, not yet sent on, in order
        self.answered: dict[str, dict[int, list[Any]]] = {}  # encoded results, waiting for their turn
        self.gone: dict[str, set[int]] = {}  # given up (stale, lost, failed): skipped when their turn comes
        self.ended: dict[str, EndOfStream] = {}
        self.closed: set[str] = set()  # results end-of-stream sent
        self.track_ids: dict[tuple[str, bytes], dict[int, int]] = {}
        self.last_track: Counter[str] = Counter()
        #: the encoded frames of open seqs whose camera's pixels the sink wants, sent with their results
        self.pixels: dict[str, dict[int, list[object]]] = {}
        #: frames in shared memory for detect workers on this host (``bus.shared_memory``)
        self.shared = SharedFrames(self.lossless, metrics) if cfg.bus.shared_memory else None
        if self.shared is not None:
            self.pools[0].share = self.shared.share

    def room(self, camera: str) -> bool:
        """Whether to take the camera's next frame now (lossless: not too many on their way)."""
        return not self.lossless or len(self.open.get(camera, ())) < self.max_open

    def frame(self, frame: Frame, sent: float) -> None:
        camera, seq = frame.camera, frame.seq
        parts = messages.encode(frame, sent, jpeg_quality=self.jpeg_quality)
        self.open.setdefault(camera, deque()).append(seq)
        if self.wants_pixels(camera):
            self.pixels.setdefault(camera, {})[seq] = parts
        if self.shared is not None:
            self.shared.keep(frame)
        self.pools[0].submit(camera, seq, parts)

    def close(self) -> None:
        """Capture is stopping: the shared memory goes."""
        if self.shared is not None:
            self.shared.close()

    def wants_pixels(self, camera: str) -> bool:
        """Whether a sink subscribed to the camera's frames on the results link (it shows or records them)."""
        return self.results.subscriber_count(messages.topic("frame", camera)) > 0

    def end(self, eos: EndOfStream) -> None:
        self.ended[eos.camera] = eos
        self.open.setdefault(eos.camera, deque())  # a camera without a frame ends too

    def pump(self) -> bool:
        """Move answers along; False if stopped while waiting for the sink (lossless)."""
        self.results.pump_subscriptions()  # the sink's, so the poll does not wake for them again
        for pool, after in zip(self.pools, [*self.pools[1:], None], strict=True):
            for answer in pool.pump():
                if not self._expected(pool, answer):
                    continue
                msg = answer.msg
                if pool is self.pools[0] and self.shared is not None:
                    self.shared.release(msg.camera, msg.seq)
                if after is None:  # the last pool's answers are the results
                    self.answered.setdefault(msg.camera, {})[msg.seq] = answer.parts
                else:
                    after.submit(msg.camera, msg.seq, self._passed_on(pool, answer))
        for pool in self.pools:
            for given in pool.take_given_up():
                self._give_up(given)
        return self._release()

    def _passed_on(self, pool: Broker, answer: Answer) -> list[Any]:
        """An answer as the next pool gets it: the hub's own track ids if the pool numbers tracks."""
        if not pool.stage.tracks:
            return answer.parts
        assert isinstance(answer.msg, Faces) and answer.work.member is not None
        return messages.with_tracks(answer.parts, self._track_ids(answer.msg, answer.work.member))

    def _expected(self, pool: Broker, answer: Answer) -> bool:
        """Whether the answer is of the kind the pool's workers give; if not, the unit is tried again."""
        if isinstance(answer.msg, messages.TYPES[pool.stage.answers]):
            return True
        work = answer.work
        log.error(
            "camera %s frame %d: a %s worker answered with %s",
            work.camera,
            work.seq,
            pool.name,
            messages.kind_of(answer.msg),
        )
        pool.retry(work, "a wrong answer")
        return False

    def _give_up(self, given: Given) -> None:
        if self.shared is not None:
            self.shared.release(given.work.camera, given.work.seq)
        self.gone.setdefault(given.work.camera, set()).add(given.work.seq)
        self.pixels.get(given.work.camera, {}).pop(given.work.seq, None)
        self.metrics.frames_dropped.labels(stage="capture", reason=given.reason).inc()

    def _track_ids(self, faces: Faces, member: bytes) -> tuple[int, ...]:
        """The hub's ids for a worker's tracks: each (camera, worker, track) gets the camera's next id."""
        key = (faces.camera, member)
        if key not in self.track_ids:
            self.track_ids[key] = {}
            cameras = [k for k in self.track_ids if k[0] == faces.camera]
            for old in cameras[:-MAX_WORKER_MAPS]:  # workers the camera had long ago
                del self.track_ids[old]
        ids = self.track_ids[key]
        out = []
        for track in faces.tracks or range(len(faces.boxes)):
            if track not in ids:
                self.last_track[faces.camera] += 1
                ids[track] = self.last_track[faces.camera]
            ids[track] = ids.pop(track)  # most recently seen last: pruning drops the longest unseen
            out.append(ids[track])
        while len(ids) > MAX_TRACK_IDS:  # a worker never reuses an id: the longest unseen have ended
            del ids[next(iter(ids))]
        return tuple(out)

    def _release(self) -> bool:
        for camera, seqs in self.open.items():
            answered = self.answered.get(camera, {})
            gone = self.gone.get(camera, set())
            pixels = self.pixels.get(camera, {})
            while seqs:
                seq = seqs[0]
                if seq in gone:
                    gone.discard(seq)
                elif seq in answered:
                    parts = answered.pop(seq)
                    frame = pixels.pop(seq, None)
                    if not self.results.send_parts(parts if frame is None else messages.with_frame(parts, frame)):
                        return False
                else:
                    break
                seqs.popleft()
            eos = self.ended.get(camera)
            if eos is not None and not seqs and camera not in self.closed:
                self.closed.add(camera)
                if not self.results.send(eos):
                    return False
        return True

    def repeat_ends(self) -> None:
        """Results end-of-stream again (a restarted sink may have missed it)."""
        for camera in self.closed:
            self.results.send(self.ended[camera])
