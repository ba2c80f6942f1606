"""The JSON-lines results file: one object per processed frame, flushed as written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from emopipe.messages import Results


def event(results: Results) -> dict[str, Any]:
    return {
        "camera": results.camera,
        "frame": results.seq,
        "ts": results.ts,
        "faces": [
            {"box": f.box.as_list(), "emotion": f.emotion, "confidence": round(f.confidence, 6)} for f in results.faces
        ],
    }


class EventWriter:
    """Appends, so a restarted sink continues the file; ``emopipe run`` starts it empty."""

    def __init__(self, path: Path | None) -> None:
        self._fh: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("a", encoding="utf-8")

    def write(self, results: Results) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(event(results), separators=(",", ":")) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
