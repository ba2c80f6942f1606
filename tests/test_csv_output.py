"""`--events FILE.csv` / `--tracks FILE.csv`: a row per face and per ended track, read back with Python's csv module.

Two complete runs of the real carphone video on two cameras, one writing JSON lines and one CSV:
lossless analysis of a file is deterministic, so every CSV row must hold exactly what the JSON
lines of the other run say (times aside: they are the capture's).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from helpers import json_and_csv_runs
from services.classify.model import EmotionModel
from services.sink.events import EVENTS, TRACKS, CsvWriter, event_columns, track_columns

SOURCES = ("a", "b")
EVENT_FIXED = ["camera", "frame", "ts", "track", "x", "y", "w", "h", "emotion", "confidence"]
EVENT_FIXED += ["smoothed_emotion", "smoothed_confidence"]
TRACK_FIXED = ["camera", "track", "first_seen", "last_seen", "seconds", "frames"]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def labels(model_path: Path) -> tuple[str, ...]:
    """The shipped model's labels, from its own metadata."""
    return EmotionModel(model_path).labels


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, carphone: Path, model_path: Path) -> dict[str, Path]:
    sources = [f"{camera}={carphone}" for camera in SOURCES]
    return json_and_csv_runs(tmp_path_factory.mktemp("csv"), model_path, sources)


def face_record(row: dict[str, str], labels: tuple[str, ...]) -> dict[str, Any]:
    """A CSV row as the JSON line's face (with its camera and frame)."""
    return {
        "camera": row["camera"],
        "frame": int(row["frame"]),
        "box": [int(row[k]) for k in "xywh"],
        "track": int(row["track"]),
        "emotion": row["emotion"],
        "confidence": float(row["confidence"]),
        "probabilities": [float(row[f"p_{label}"]) for label in labels],
        "smoothed": {"emotion": row["smoothed_emotion"], "confidence": float(row["smoothed_confidence"])},
    }


def test_csv_headers_are_the_documented_columns_named_after_the_models_labels(
    runs: dict[str, Path], labels: tuple[str, ...]
) -> None:
    assert labels == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    events_header, _ = read_csv(runs["out.csv"])
    assert events_header == EVENT_FIXED + [f"p_{label}" for label in labels] == event_columns(labels)
    tracks_header, _ = read_csv(runs["tracks.csv"])
    shares = [f"share_{label}" for label in labels]
    assert tracks_header == TRACK_FIXED + shares + [f"p_{label}" for label in labels] == track_columns(labels)
    assert runs["out.csv"].read_text().count("camera,frame,") == 1  # one header, the first line


def test_csv_events_hold_one_row_per_face_with_the_values_of_the_json_lines(
    runs: dict[str, Path], labels: tuple[str, ...]
) -> None:
    """Every face of the JSON lines is one row, in the same frame, with the same box, track, labels
    and probabilities; a frame without a face has no row."""
    _, rows = read_csv(runs["out.csv"])
    lines = read_lines(runs["out.jsonl"])
    expected = sorted(
        ({"camera": e["camera"], "frame": e["frame"], **face} for e in lines for face in e["faces"]),
        key=lambda f: (f["camera"], f["frame"]),
    )
    got = sorted((face_record(row, labels) for row in rows), key=lambda f: (f["camera"], f["frame"]))
    assert len(got) == len(expected) == 168  # 84 of carphone's 120 frames have a face, on each camera
    assert got == expected
    empty = {(e["camera"], e["frame"]) for e in lines if not e["faces"]}
    assert len(empty) == 2 * 36 and not empty & {(row["camera"], int(row["frame"])) for row in rows}


def test_csv_event_rows_are_consistent_in_themselves(runs: dict[str, Path], labels: tuple[str, ...]) -> None:
    """Probabilities sum to 1 and their largest is the row's emotion and confidence; times rise with the frames."""
    _, rows = read_csv(runs["out.csv"])
    for row in rows:
        probs = [float(row[f"p_{label}"]) for label in labels]
        assert abs(sum(probs) - 1.0) < 1e-4
        assert labels[probs.index(max(probs))] == row["emotion"] and float(row["confidence"]) == max(probs)
        assert row["smoothed_emotion"] in labels and 0.0 < float(row["smoothed_confidence"]) <= 1.0
    for camera in SOURCES:
        mine = sorted((int(r["frame"]), float(r["ts"])) for r in rows if r["camera"] == camera)
        assert [ts for _, ts in mine] == sorted(ts for _, ts in mine)


def test_csv_tracks_flatten_the_json_track_lines(runs: dict[str, Path], labels: tuple[str, ...]) -> None:
    _, rows = read_csv(runs["tracks.csv"])
    lines = read_lines(runs["tracks.jsonl"])
    assert len(rows) == len(lines) >= len(SOURCES)
    by_key = {(line["camera"], line["track"]): line for line in lines}
    for row in rows:
        line = by_key[(row["camera"], int(row["track"]))]
        assert int(row["frames"]) == line["frames"]
        assert {label: float(row[f"share_{label}"]) for label in labels} == line["emotions"]
        assert {label: float(row[f"p_{label}"]) for label in labels} == line["probabilities"]
        first, last = float(row["first_seen"]), float(row["last_seen"])
        assert first <= last and float(row["seconds"]) == round(last - first, 3)
        assert abs(sum(float(row[f"share_{label}"]) for label in labels) - 1.0) < 1e-3


def test_a_restarted_sink_continues_a_csv_file_with_one_header_and_its_partial_last_row_cut(
    runs: dict[str, Path], labels: tuple[str, ...], tmp_path: Path
) -> None:
    lines = [line for line in read_lines(runs["out.jsonl"]) if line["faces"]][:4]
    path = tmp_path / "out.csv"
    first = CsvWriter(path, EVENTS)
    for line in lines[:2]:
        first.write(line, labels)
    first.close()
    with path.open("a") as fh:
        fh.write("a,99,3.1,1,60,3")  # a sink killed within a row
    second = CsvWriter(path, EVENTS)
    for line in lines[2:]:
        second.write(line, labels)
    second.close()
    header, rows = read_csv(path)
    assert header == event_columns(labels)
    assert [int(row["frame"]) for row in rows] == [line["frame"] for line in lines]
    assert path.read_text().count("camera,") == 1


def test_a_csv_file_with_other_columns_is_refused_naming_it(
    runs: dict[str, Path], labels: tuple[str, ...], tmp_path: Path
) -> None:
    path = tmp_path / "tracks.csv"
    path.write_text("camera,frame,something_else\n")
    line = read_lines(runs["tracks.jsonl"])[0]
    writer = CsvWriter(path, TRACKS)
    with pytest.raises(OSError, match=f"cannot write {path}: its header is not 'camera,track,first_seen,"):
        writer.write(line, labels)
    writer.close()
    assert path.read_text() == "camera,frame,something_else\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_csv_row_that_cannot_be_written_raises_naming_the_file(
    runs: dict[str, Path], labels: tuple[str, ...]
) -> None:
    line = next(line for line in read_lines(runs["out.jsonl"]) if line["faces"])
    writer = CsvWriter(Path("/dev/full"), EVENTS)
    with pytest.raises(OSError, match="cannot write /dev/full: No space left on device"):
        writer.write(line, labels)
    writer.close()
