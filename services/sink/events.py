"""The JSON-lines files: one object per processed frame (events), one per ended face track (tracks)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import IO, Any

from emopipe.messages import Results
from services.sink.smoothing import Smoothed


def event(results: Results, smoothed: list[Smoothed]) -> dict[str, Any]:
    """One frame's line; each face's ``probabilities`` are in the model's label order (``labels``
    of the model's metadata: FER-2013's angry, disgust, fear, happy, sad, surprise, neutral)."""
    return {
        "camera": results.camera,
        "frame": results.seq,
        "ts": results.ts,
        "faces": [
            {
                "box": f.box.as_list(),
                "track": f.track,
                "emotion": f.emotion,
                "confidence": round(f.confidence, 6),
                "probabilities": [round(x, 6) for x in f.probabilities],
                "smoothed": {"emotion": s.emotion, "confidence": round(s.confidence, 6)},
            }
            for f, s in zip(results.faces, smoothed, strict=True)
        ],
    }


def drop_partial_line(path: Path) -> None:
    """A sink killed in the middle of a line left it unfinished: cut it off, so the lines
    appended next stay whole (every line written before stays)."""
    if not path.is_file():
        return
    with path.open("rb+") as fh:
        end = fh.seek(0, 2)
        if end == 0:
            return
        fh.seek(end - 1)
        if fh.read(1) == b"\n":
            return
        start = max(0, end - (1 << 20))
        fh.seek(start)
        tail = fh.read()
        cut = tail.rfind(b"\n")
        fh.truncate(start + cut + 1 if cut >= 0 else 0 if start == 0 else end)


class LineWriter:
    """Appends JSON lines, so a restarted sink continues the file; ``emopipe run`` starts it empty."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                drop_partial_line(path)
                self._fh = path.open("ab", buffering=0)  # each line one write(2), nothing held back
            except OSError as exc:
                raise OSError(f"cannot write the JSON-lines file {path}: {exc.strerror or exc}") from exc

    def write(self, line: dict[str, Any]) -> None:
        """Append one whole line, or raise OSError naming the file (a full disk) with nothing of it left."""
        if self._fh is None:
            return
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        try:
            written = self._fh.write(data)
            if written is not None and 0 < written < len(data):  # the disk filled up within the line
                self._fh.truncate(self._fh.seek(0, 2) - written)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write {self.path}: {exc.strerror or exc}") from exc

    @property
    def enabled(self) -> bool:
        return self._fh is not None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
