"""capture's hub: hands its cameras' work to the detect and classify workers and sends
each camera's results on to the sink in frame order.

Capture owns each frame until it is answered, so the lossless promise (every frame gets
exactly one line, whichever worker dies) is kept in one place:

    frame ──▶ detect pool (sticky by camera) ──▶ faces ──▶ classify pool (least busy)
          ──▶ results, released per camera in frame order ──▶ sink

The workers connect: ``endpoints.frames`` takes detect workers (and the sink, which
subscribes to frames for the viewer), ``endpoints.faces`` classify workers, and
``endpoints.results`` the sink. A camera's track ids are the hub's own (a camera that
moves to another detect worker starts new tracks there; ids never repeat).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import replace

from emopipe import messages
from emopipe.bus import Publisher
from emopipe.config import Config
from emopipe.messages import EndOfStream, Faces, Message, Results
from emopipe.metrics import Metrics
from emopipe.pool import Given, Pool, Work

log = logging.getLogger("emopipe.capture")
#: live: units in flight per camera at detect, per worker at classify (one running, one queued)
LIVE_WINDOW = 2


class Hub:
    def __init__(self, frames: Publisher, faces: Publisher, results: Publisher, cfg: Config, metrics: Metrics) -> None:
        self.lossless = cfg.lossless
        window = cfg.bus.lossless_hwm if cfg.lossless else LIVE_WINDOW
        timeout = cfg.sink.match_timeout_s
        self.detect = Pool(
            frames, "detect", "frame", sticky=True, lossless=cfg.lossless, window=window, timeout_s=timeout
        )
        self.classify = Pool(
            faces, "classify", "faces", sticky=False, lossless=cfg.lossless, window=window, timeout_s=timeout
        )
        self.results = results
        self.metrics = metrics
        #: lossless: frames of a camera on their way at most (back-pressure reaches the source)
        self.max_open = 4 * cfg.bus.lossless_hwm
        self.open: dict[str, deque[int]] = {}  # seqs handed to detect, not yet sent on, in order
        self.answered: dict[str, dict[int, Results]] = {}
        self.gone: dict[str, set[int]] = {}  # given up (live): skipped when their turn comes
        self.ended: dict[str, EndOfStream] = {}
        self.closed: set[str] = set()  # results end-of-stream sent
        self.track_ids: dict[tuple[str, bytes], dict[int, int]] = {}
        self.last_track: Counter[str] = Counter()

    def room(self, camera: str) -> bool:
        """Whether to take the camera's next frame now (lossless: not too many on their way)."""
        return not self.lossless or len(self.open.get(camera, ())) < self.max_open

    def frame(self, camera: str, seq: int, parts: list[object]) -> None:
        self.open.setdefault(camera, deque()).append(seq)
        self.detect.submit(camera, seq, parts)

    def end(self, eos: EndOfStream) -> None:
        self.ended[eos.camera] = eos

    def pump(self) -> bool:
        """Move answers along; False if stopped while waiting for the sink (lossless)."""
        for answer in self.detect.pump():
            faces = answer.msg
            if not self._expected(answer.work.camera, answer.work.seq, faces, Faces):
                continue
            assert isinstance(faces, Faces) and answer.work.member is not None
            faces = replace(faces, tracks=self._track_ids(faces, answer.work.member))
            self.classify.submit(faces.camera, faces.seq, messages.encode(faces, sent=time.time()))
        for answer in self.classify.pump():
            if self._expected(answer.work.camera, answer.work.seq, answer.msg, Results):
                assert isinstance(answer.msg, Results)
                self.answered.setdefault(answer.msg.camera, {})[answer.msg.seq] = answer.msg
        for given in self.detect.take_given_up() + self.classify.take_given_up():
            self._give_up(given)
        return self._release()

    def _expected(self, camera: str, seq: int, msg: Message, kind: type) -> bool:
        if isinstance(msg, kind):
            return True
        log.error("camera %s frame %d: a worker answered with %s, not %s", camera, seq, messages.kind_of(msg), kind)
        self._give_up(Given(Work(camera, seq, ()), "malformed"))
        return False

    def _give_up(self, given: Given) -> None:
        self.gone.setdefault(given.work.camera, set()).add(given.work.seq)
        self.metrics.frames_dropped.labels(stage="capture", reason=given.reason).inc()

    def _track_ids(self, faces: Faces, member: bytes) -> tuple[int, ...]:
        """The hub's ids for a worker's tracks: each (camera, worker, track) gets the camera's next id."""
        ids = self.track_ids.setdefault((faces.camera, member), {})
        out = []
        for track in faces.tracks or range(len(faces.boxes)):
            if track not in ids:
                self.last_track[faces.camera] += 1
                ids[track] = self.last_track[faces.camera]
            out.append(ids[track])
        return tuple(out)

    def _release(self) -> bool:
        for camera, seqs in self.open.items():
            answered = self.answered.get(camera, {})
            gone = self.gone.get(camera, set())
            while seqs:
                seq = seqs[0]
                if seq in gone:
                    gone.discard(seq)
                elif seq in answered:
                    if not self.results.send(answered.pop(seq)):
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
