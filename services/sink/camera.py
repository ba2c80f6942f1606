"""What the sink knows of one camera: lines written, and how many frames its end-of-stream says it had.

Capture's hub sends a camera's results in frame order and its end-of-stream after the last
of them, on one link, so the camera is done once that end-of-stream has come; a frame the
hub gave up has no line, which makes a lossless run incomplete.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CameraState:
    written: int = 0  # lines written
    produced: int | None = None  # frames the camera produced, from its end-of-stream; None: not ended

    @property
    def done(self) -> bool:
        return self.produced is not None

    @property
    def complete(self) -> bool:
        """Every frame the camera produced got its line."""
        return self.written == self.produced
