"""The Python API (emopipe/api.py): the stages' code in the test's process, on the real video and model,
against `emopipe run`'s own JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import emopipe
from deploy.evaluate import pad_still
from emopipe.api import PaddedStill
from emopipe.config import ConfigError, from_dict
from emopipe.labels import EMOTIONS
from helpers import REPO, run_source
from services.capture.sources import SourceError
from services.detect.tracker import iou
from services.sink.events import event_columns

RUN_TIMEOUT_S = 120


def run_pipeline(tmp: Path, video: Path, model: Path, **sections: dict[str, object]) -> dict[str, Any]:
    """`emopipe run --source VIDEO --events FILE` (lossless: a file) with a config; its lines and that config."""
    run = run_source(tmp, model, video, "run", **sections)
    assert run["code"] == 0, run["log"][-3000:]
    return run


@pytest.fixture(scope="module")
def every_frame_run(tmp_path_factory: pytest.TempPathFactory, carphone: Path, model_path: Path) -> dict[str, Any]:
    return run_pipeline(tmp_path_factory.mktemp("every_frame"), carphone, model_path, detect={"every_frame": True})


@pytest.fixture(scope="module")
def scheduled_run(tmp_path_factory: pytest.TempPathFactory, carphone: Path, model_path: Path) -> dict[str, Any]:
    """The default detection: the schedule and the tracker, which run on each frame's time."""
    return run_pipeline(tmp_path_factory.mktemp("scheduled"), carphone, model_path)


@pytest.fixture(scope="module")
def scheduled_analysis(scheduled_run: dict[str, Any], carphone: Path) -> list[dict[str, Any]]:
    return [r.to_dict() for r in emopipe.analyze(carphone, scheduled_run["config"])]


def faces_of(lines: list[dict[str, Any]], *keys: str) -> list[list[tuple[Any, ...]]]:
    return [[tuple(json.dumps(face[k]) for k in keys) for face in line["faces"]] for line in lines]


# ---------------------------------------------------------------- analyze against emopipe run


def test_analyze_with_full_frame_detection_gives_emopipe_runs_boxes_tracks_labels_and_probabilities(
    every_frame_run: dict[str, Any], carphone: Path
) -> None:
    """Same config file, same video: every frame's faces equal the pipeline's line, number for number
    (full-frame detection does not depend on the frames' times)."""
    lines = every_frame_run["lines"]
    got = [r.to_dict() for r in emopipe.analyze(carphone, every_frame_run["config"])]
    assert [g["frame"] for g in got] == [line["frame"] for line in lines] == list(range(120))
    keys = ("box", "track", "emotion", "confidence", "probabilities")
    assert faces_of(got, *keys) == faces_of(lines, *keys)
    assert sum(len(g["faces"]) for g in got) >= 60  # the full-frame cascade finds the face in 70 of 120 frames


def test_analyze_gives_emopipe_runs_boxes_and_labels_with_the_detection_schedule_and_tracker(
    scheduled_run: dict[str, Any], scheduled_analysis: list[dict[str, Any]]
) -> None:
    lines = scheduled_run["lines"]
    assert len(scheduled_analysis) == len(lines) == 120
    boxes_labels = ("box", "track", "emotion")
    assert faces_of(scheduled_analysis, *boxes_labels) == faces_of(lines, *boxes_labels)


def test_analyze_gives_emopipe_runs_media_times_and_smoothed_labels(
    scheduled_run: dict[str, Any], scheduled_analysis: list[dict[str, Any]]
) -> None:
    """Lossless file runs time each frame by its place in the file, so the smoothing matches too:
    the whole line is the same."""
    assert [a["ts"] for a in scheduled_analysis] == [line["ts"] for line in scheduled_run["lines"]]
    assert scheduled_analysis == scheduled_run["lines"]


def test_analyze_times_a_files_frames_by_opencvs_position_in_the_file(carphone: Path) -> None:
    cap = cv2.VideoCapture(str(carphone))
    positions = []
    while cap.read()[0]:
        positions.append(round(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000, 6))  # microseconds, as in the lines
    cap.release()
    results = list(emopipe.analyze(carphone))
    assert [r.ts for r in results] == positions
    assert positions[:2] == [0.0, pytest.approx(1001 / 30000, abs=1e-6)]  # 29.97 (NTSC) frames a second


# ---------------------------------------------------------------- folders, config, rows


def test_analyze_of_a_folder_times_each_image_by_its_index_over_folder_fps_and_skips_one_it_cannot_read(
    tmp_path: Path, carphone_frames: list[np.ndarray]
) -> None:
    for name, k in (("a.png", 30), ("c.png", 40), ("d.png", 50)):
        cv2.imwrite(str(tmp_path / name), carphone_frames[k])
    (tmp_path / "b.png").write_bytes(b"not a png")
    results = list(emopipe.analyze(tmp_path, capture__folder_fps=4.0, detect__every_frame=True))
    assert [(r.camera, r.frame, r.ts) for r in results] == [("cam0", 0, 0.0), ("cam0", 1, 0.5), ("cam0", 2, 0.75)]
    assert all(len(r.faces) == 1 and r.faces[0].emotion in EMOTIONS for r in results)


def test_analyze_takes_a_config_file_a_config_object_and_section__key_overrides_alike(
    tmp_path: Path, carphone: Path
) -> None:
    """detect.min_size 200 finds no face in a 176x144 video, however it is given; 40 (default) does."""
    toml = tmp_path / "big.toml"
    toml.write_text("[detect]\nmin_size = 200\nscan_tile = 401\n")
    big = from_dict({"detect": {"min_size": 200, "scan_tile": 401}})
    for results in (
        emopipe.analyze(carphone, toml),
        emopipe.analyze(carphone, str(toml)),
        emopipe.analyze(carphone, big),
        emopipe.analyze(carphone, detect__min_size=200, detect__scan_tile=401),
    ):
        assert sum(len(r.faces) for r in results) == 0
    assert sum(len(r.faces) for r in emopipe.analyze(carphone, toml, detect__min_size=40)) > 80


def test_analyze_names_the_camera_as_asked(carphone: Path) -> None:
    first = next(emopipe.analyze(carphone, camera="door"))
    assert (first.camera, first.frame, first.to_dict()["camera"]) == ("door", 0, "door")


def test_rows_flatten_one_row_per_face_with_the_csv_columns(carphone: Path) -> None:
    results = list(emopipe.analyze(carphone, detect__every_frame=True))
    table = list(emopipe.rows(results))
    assert len(table) == sum(len(r.faces) for r in results) >= 60
    assert list(table[0]) == event_columns(results[0].labels) and results[0].labels == EMOTIONS
    face_results = [r for r in results if r.faces]
    first, line = table[0], face_results[0].to_dict()
    face = line["faces"][0]
    assert (first["frame"], first["ts"], first["track"]) == (line["frame"], line["ts"], face["track"])
    assert [first[k] for k in "xywh"] == face["box"]
    assert [first[f"p_{label}"] for label in EMOTIONS] == face["probabilities"]
    assert first["smoothed_emotion"] == face["smoothed"]["emotion"]


# ---------------------------------------------------------------- one picture


def test_analyze_image_finds_the_one_face_of_a_real_frame_where_the_full_frame_cascade_does(
    carphone_frames: list[np.ndarray], tmp_path: Path
) -> None:
    frame = carphone_frames[39]
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]
    (reference,) = cascade.detectMultiScale(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), 1.1, 5, minSize=(40, 40))
    (face,) = emopipe.analyze_image(frame)
    assert iou(tuple(map(float, face.box.as_list())), tuple(map(float, reference))) > 0.9  # type: ignore[arg-type]
    assert face.track == 1
    assert len(face.probabilities) == 7 and sum(face.probabilities) == pytest.approx(1.0, abs=1e-4)
    assert face.emotion == EMOTIONS[int(np.argmax(face.probabilities))]
    assert face.confidence == max(face.probabilities)
    assert (face.smoothed.emotion, face.smoothed.confidence) == (face.emotion, face.confidence)
    path = tmp_path / "frame.png"  # lossless: the same pixels from a file
    cv2.imwrite(str(path), frame)
    assert emopipe.analyze_image(path) == emopipe.analyze_image(str(path)) == [face]


def test_analyze_image_finds_a_tightly_cropped_face_in_the_crops_pixels(carphone_frames: list[np.ndarray]) -> None:
    """A picture that is all face (a data set's crop) is padded as emopipe evaluate pads stills."""
    crop = carphone_frames[39][38:99, 44:105]  # the face's own box
    (face,) = emopipe.analyze_image(crop)
    x, y, w, h = face.box.as_list()
    assert 0 <= x and 0 <= y and x + w <= 61 and y + h <= 61 and w * h > 0.5 * 61 * 61
    assert face.to_dict() == {
        "box": [x, y, w, h],
        "track": 1,
        "emotion": face.emotion,
        "confidence": round(face.confidence, 6),
        "probabilities": [round(p, 6) for p in face.probabilities],
        "smoothed": {"emotion": face.emotion, "confidence": round(face.confidence, 6)},
    }


@pytest.mark.parametrize("shape", [(144, 176), (61, 61), (300, 120), (100, 159)])
def test_a_still_is_scaled_up_when_small_made_square_and_padded_with_half_its_side_around(
    shape: tuple[int, int], carphone_frames: list[np.ndarray]
) -> None:
    """The framing `analyze_image` and `emopipe evaluate` (its pad_still) give a still."""
    picture = cv2.resize(carphone_frames[39], (shape[1], shape[0]))
    still = PaddedStill.of(picture)
    assert np.array_equal(still.image, pad_still(picture))
    scale = max(1.0, 160 / max(shape))
    h, w = round(shape[0] * scale), round(shape[1] * scale)
    side = max(h, w)
    full = side + 2 * (side // 2)
    assert still.image.shape == (full, full, 3) and still.scale == pytest.approx(scale)
    x, y = still.offset
    assert (x, y) == ((side - w) // 2 + side // 2, (side - h) // 2 + side // 2)
    inner = still.image[y : y + h, x : x + w]
    expected = picture if scale == 1.0 else cv2.resize(picture, (w, h), interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(inner, expected)
    outside = still.image.copy()
    outside[y : y + h, x : x + w] = 0
    assert not outside.any(), "black around the picture"


# ---------------------------------------------------------------- bad inputs


def test_a_missing_source_or_image_raises_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.mp4"
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        emopipe.analyze(missing)  # at the call, not at the first frame
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        emopipe.analyze_image(tmp_path / "nowhere.jpg")


def test_a_file_that_is_no_image_or_video_and_a_folder_without_images_raise_naming_them(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture\n")
    with pytest.raises(SourceError, match="notes.jpg"):
        emopipe.analyze_image(text)
    video = tmp_path / "notes.mp4"
    video.write_text("not a video\n")
    with pytest.raises(SourceError, match="notes.mp4"):
        emopipe.analyze(video)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="empty"):
        emopipe.analyze(empty)


def test_an_array_that_is_not_a_bgr_picture_raises_naming_its_shape() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4, 4\) uint8"):
        emopipe.analyze_image(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="float32"):
        emopipe.analyze_image(np.zeros((4, 4, 3), np.float32))


def test_a_bad_override_raises_a_config_error_naming_the_key(carphone: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'detect\.min_sise'"):
        emopipe.analyze(carphone, detect__min_sise=60)
    with pytest.raises(ConfigError, match="'detect.min_size' must be int"):
        emopipe.analyze(carphone, detect__min_size="big")
    with pytest.raises(ConfigError, match="min_size=60: expected SECTION__KEY"):
        emopipe.analyze(carphone, min_size=60)


# ---------------------------------------------------------------- layout


def test_importing_emopipes_shared_modules_loads_neither_the_api_nor_any_stage() -> None:
    """emopipe/__init__ exports the API lazily: the stages import emopipe.messages without a cycle."""
    code = (
        "import sys, emopipe.messages, emopipe.config; "
        "print(sorted(m for m in sys.modules if m == 'emopipe.api' or m.startswith('services')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert "analyze" in dir(emopipe) and emopipe.analyze.__module__ == "emopipe.api"
