"""The events and tracks files: one record per processed frame (events), one per ended face track
(tracks), as JSON lines (the default) or, for a path ending in ``.csv``, as CSV rows."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
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

    kind = "JSON-lines"

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                drop_partial_line(path)
                self._fh = path.open("ab", buffering=0)  # each line one write(2), nothing held back
            except OSError as exc:
                raise OSError(f"cannot write the {self.kind} file {path}: {exc.strerror or exc}") from exc

    def write(self, line: dict[str, Any], labels: tuple[str, ...] = ()) -> None:
        """Append one whole line, or raise OSError naming the file (a full disk) with nothing of it left.
        ``labels``: the model's, in its order (what a CSV file names its probability columns by)."""
        if self._fh is None:
            return
        self._append((json.dumps(line, separators=(",", ":")) + "\n").encode())

    def _append(self, data: bytes) -> None:
        """One write(2) of ``data``; a disk that fills up within it leaves nothing of it behind."""
        assert self._fh is not None
        try:
            written = self._fh.write(data)
            if written is not None and 0 < written < len(data):  # the disk filled up within the line
                self._fh.truncate(self._fh.seek(0, 2) - written)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


# ---------------------------------------------------------------- CSV


def event_columns(labels: tuple[str, ...]) -> list[str]:
    """The ``--events FILE.csv`` header: one row per face, ``p_<label>`` in the model's order."""
    fixed = ["camera", "frame", "ts", "track", "x", "y", "w", "h", "emotion", "confidence"]
    return fixed + ["smoothed_emotion", "smoothed_confidence"] + [f"p_{label}" for label in labels]


def event_rows(line: dict[str, Any], labels: tuple[str, ...]) -> list[list[Any]]:
    """One row per face of an ``event`` line; a frame without a face has no row."""
    rows = []
    for face in line["faces"]:
        if len(face["probabilities"]) != len(labels):
            raise ValueError(f"{len(face['probabilities'])} probabilities for the {len(labels)} labels {labels}")
        smoothed = face["smoothed"]
        head = [line["camera"], line["frame"], line["ts"], face["track"], *face["box"]]
        rows.append(
            head
            + [face["emotion"], face["confidence"], smoothed["emotion"], smoothed["confidence"]]
            + list(face["probabilities"])
        )
    return rows


def track_columns(labels: tuple[str, ...]) -> list[str]:
    """The ``--tracks FILE.csv`` header: a track summary flattened, ``share_<label>`` and ``p_<label>``."""
    fixed = ["camera", "track", "first_seen", "last_seen", "seconds", "frames"]
    return fixed + [f"share_{label}" for label in labels] + [f"p_{label}" for label in labels]


def track_rows(line: dict[str, Any], labels: tuple[str, ...]) -> list[list[Any]]:
    """The one row of a track summary (``TrackState.summary``)."""
    fixed = [line[key] for key in ("camera", "track", "first_seen", "last_seen", "seconds", "frames")]
    return [fixed + [line["emotions"][label] for label in labels] + [line["probabilities"][label] for label in labels]]


@dataclass(frozen=True)
class Table:
    """How one kind of record becomes CSV: its header and its rows, given the model's labels."""

    columns: Callable[[tuple[str, ...]], list[str]]
    rows: Callable[[dict[str, Any], tuple[str, ...]], list[list[Any]]]


EVENTS = Table(event_columns, event_rows)
TRACKS = Table(track_columns, track_rows)


class CsvWriter(LineWriter):
    """Appends CSV rows (Python's ``csv`` module, ``\\n`` line ends) like ``LineWriter`` its lines:
    a restarted sink continues the file (the header is written only into an empty file, and a file
    whose header differs is refused), a partial last row is cut off, and each record's rows (an
    event's faces) go out in one write(2), whole or not at all."""

    kind = "CSV"

    def __init__(self, path: Path | None, table: Table) -> None:
        super().__init__(path)
        self.table = table
        self._header: str | None = self._existing_header()  # None: the file is empty

    def _existing_header(self) -> str | None:
        if self.path is None or not self.path.is_file():
            return None
        with self.path.open("rb") as fh:
            first = fh.readline()
        return first.decode("utf-8", "replace") or None

    def write(self, line: dict[str, Any], labels: tuple[str, ...] = ()) -> None:
        """Append the rows of one record (none for a frame without a face), or raise OSError naming the file."""
        if self._fh is None:
            return
        rows = self.table.rows(line, labels)
        if not rows:
            return
        header = _csv_text([self.table.columns(labels)])
        new_file = self._header is None
        if not new_file and self._header != header:
            raise OSError(
                errno.EINVAL, f"cannot write {self.path}: its header is not {header.strip()!r}; refusing to append"
            )
        self._append(((header if new_file else "") + _csv_text(rows)).encode())
        self._header = header


def _csv_text(rows: list[list[Any]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def open_writer(path: Path | None, table: Table) -> LineWriter:
    """The events or tracks file at ``path``: CSV when it ends in ``.csv``, else JSON lines (none: no file)."""
    if path is not None and path.suffix.lower() == ".csv":
        return CsvWriter(path, table)
    return LineWriter(path)
