"""Join each camera's frames (from capture) with their results (from classify) by sequence number.

Both paths deliver a camera's messages in sequence order, so: a result whose frame
was overtaken by a later frame will never get it; a frame older than the newest
result will never get one. Results are released strictly in sequence order.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from emopipe.messages import Frame, Results

#: live mode: frames kept waiting for results, per camera, at most
MAX_PENDING_FRAMES = 64


@dataclass(frozen=True)
class Joined:
    results: Results
    frame: Frame | None  # None: the frame never arrived, only its results are written


@dataclass
class Released:
    joined: list[Joined] = field(default_factory=list)
    unmatched_frames: int = 0  # frames dropped because their results never came
    missing_frames: int = 0  # results written without their frame


class CameraJoin:
    def __init__(self, camera: str, lossless: bool, timeout_s: float) -> None:
        self.camera = camera
        self.lossless = lossless
        self.timeout_s = timeout_s
        self.frames: dict[int, tuple[float, Frame]] = {}
        self.results: deque[tuple[float, Results]] = deque()
        self.newest_frame = -1
        self.last_released = -1
        self.frames_eos: int | None = None
        self.results_eos: int | None = None
        self.written = 0
        # live, with nothing to show or record, the sink does not take this camera's frames:
        # results go out without one, and do so (not counted as missing) until the first frame comes
        self.frames_wanted = True
        self.frames_from: int | None = 0  # frames are expected from this seq on (None: from the next that comes)

    def want_frames(self, wanted: bool) -> None:
        if wanted and not self.frames_wanted:
            self.frames_from = None
        self.frames_wanted = wanted

    def add_frame(self, frame: Frame, now: float | None = None) -> None:
        self.frames[frame.seq] = (time.monotonic() if now is None else now, frame)
        self.newest_frame = max(self.newest_frame, frame.seq)
        if self.frames_from is None:
            self.frames_from = frame.seq

    def add_results(self, results: Results, now: float | None = None) -> None:
        self.results.append((time.monotonic() if now is None else now, results))

    def end_frames(self, count: int) -> None:
        self.frames_eos = count

    def end_results(self, count: int) -> None:
        self.results_eos = count

    @property
    def done(self) -> bool:
        return self.frames_eos is not None and self.results_eos is not None and not self.results

    @property
    def complete(self) -> bool:
        """Every frame the camera produced got its line."""
        return self.done and self.written == self.frames_eos == self.results_eos

    def release(self, now: float | None = None) -> Released:
        now = time.monotonic() if now is None else now
        out = Released()
        while self.results:
            arrived, res = self.results[0]
            entry = self.frames.pop(res.seq, None)
            if entry is None and not self._frame_gone(res.seq, now - arrived):
                break
            self.results.popleft()
            out.missing_frames += entry is None and self._frame_expected(res.seq)
            out.joined.append(Joined(res, entry[1] if entry else None))
            self.last_released = res.seq
            self.written += 1
        dropped = self._drop_unmatched(now)
        out.unmatched_frames = dropped if self.frames_wanted else 0  # not wanted: frames still on their way
        return out

    def _frame_expected(self, seq: int) -> bool:
        return self.frames_wanted and self.frames_from is not None and seq >= self.frames_from

    def _frame_gone(self, seq: int, waited: float) -> bool:
        if self.frames_eos is not None or self.newest_frame > seq or not self._frame_expected(seq):
            return True
        return not self.lossless and waited > self.timeout_s

    def _drop_unmatched(self, now: float) -> int:
        results_over = self.results_eos is not None and not self.results
        stale = [
            seq
            for seq, (arrived, _) in self.frames.items()
            if seq <= self.last_released or results_over or (not self.lossless and now - arrived > self.timeout_s)
        ]
        if not self.lossless and len(self.frames) - len(stale) > MAX_PENDING_FRAMES:
            keep = sorted(s for s in self.frames if s not in stale)[-MAX_PENDING_FRAMES:]
            stale = [s for s in self.frames if s not in keep]
        for seq in stale:
            del self.frames[seq]
        return len(stale)
