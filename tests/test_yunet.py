"""detect.detector = "yunet": the shipped model, its faces on real frames, the Haar framing, the stage's Detect."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_detect import reference_haar

from deploy import gallery, measure
from emopipe.config import ConfigError, DetectConfig, from_dict
from emopipe.messages import Frame
from services.detect import yunet
from services.detect.main import Detect
from services.detect.tracker import iou
from services.detect.yunet import YuNetDetector, haar_framing
from services.detect.yunet_net import YuNetNet

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
SHA256 = "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"


def rect(box: object) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in box)  # type: ignore[attr-defined]
    return x, y, w, h


def test_the_model_ships_in_the_package_with_its_licence_provenance_and_pinned_hash() -> None:
    assert yunet.MODEL.parent == REPO / "services" / "detect" / "models"
    assert hashlib.sha256(yunet.MODEL.read_bytes()).hexdigest() == SHA256
    licence = (yunet.MODEL.parent / "LICENSE").read_text()
    assert "MIT License" in licence and "Shiqi Yu" in licence
    assert SHA256 in (yunet.MODEL.parent / "README.md").read_text()
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert {"models/*.onnx", "models/LICENSE", "models/*.md"} <= set(package_data["services.detect"])


def test_yunet_loaded_from_the_package_finds_the_face_of_a_real_frame_with_its_landmarks(
    carphone_frames: list[np.ndarray],
) -> None:
    image = carphone_frames[0]
    faces = YuNetDetector(min_size=40, score=0.7).find(image)
    assert len(faces) == 1
    face = faces[0]
    [haar] = reference_haar(image)
    assert iou(rect(face.box.as_list()), rect(haar)) >= 0.6  # in the cascade's framing
    assert face.score >= 0.7
    right_eye, left_eye, nose, mouth_right, mouth_left = face.landmarks
    b = face.box
    for x, y in face.landmarks:
        assert b.x <= x <= b.x + b.w and b.y <= y <= b.y + b.h
    assert right_eye[0] < nose[0] < left_eye[0] and mouth_right[0] < mouth_left[0]  # the person's right: left
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(mouth_right[1], mouth_left[1])


def sorted_rows(rows: np.ndarray | None) -> np.ndarray:
    rows = np.zeros((0, 15), np.float32) if rows is None else rows
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))]


def test_yunet_on_onnxruntime_finds_what_opencvs_face_detector_finds_on_real_frames(
    carphone_frames: list[np.ndarray],
) -> None:
    """YuNetNet replaces cv2.FaceDetectorYN (twice as fast): the same faces, boxes, landmarks and
    scores, on one face (carphone) and many (the gallery clip: six people a scene, 44-76 px)."""
    gallery_frames = list(measure.frames_of(gallery.gallery_video(), limit=400))[::20]
    frames = [cv2.resize(f, (320, 240), interpolation=cv2.INTER_AREA) for f in carphone_frames[::16] + gallery_frames]
    opencv = cv2.FaceDetectorYN.create(str(yunet.MODEL), "", (320, 240), 0.6, yunet.NMS_IOU, yunet.TOP_K)
    ours = YuNetNet(yunet.MODEL, 0.6, yunet.NMS_IOU, yunet.TOP_K)
    faces = 0
    for frame in frames:
        expected, got = sorted_rows(opencv.detect(frame)[1]), sorted_rows(ours.detect(frame))
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-3)
        faces += len(got)
    assert faces >= len(carphone_frames[::16]) + 4 * len(gallery_frames)
    # an input whose sides are not multiples of 32 is padded as OpenCV pads it
    odd = cv2.resize(carphone_frames[0], (312, 234), interpolation=cv2.INTER_AREA)
    opencv.setInputSize((312, 234))
    np.testing.assert_allclose(sorted_rows(ours.detect(odd)), sorted_rows(opencv.detect(odd)[1]), atol=1e-3)
    assert ours.detect(np.zeros((240, 320, 3), np.uint8)) is None


def test_a_missing_or_damaged_model_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "yunet.onnx"
    broken.write_bytes(yunet.MODEL.read_bytes()[:1000])
    for path in (tmp_path / "none.onnx", broken):
        with pytest.raises(FileNotFoundError, match=f"the YuNet model {path} is missing or damaged"):
            YuNetDetector(40, 0.7, model=path)


def test_the_haar_framing_brings_yunet_boxes_onto_the_cascades_boxes_of_the_same_faces(
    carphone_frames: list[np.ndarray],
) -> None:
    """Measured on 1,441 pairs at 640x480 (mean IoU 0.72 -> 0.91); here on carphone scaled to 640x480 as there."""
    detector = YuNetDetector(min_size=40, score=0.7)
    raw, mapped = [], []
    for frame in carphone_frames[::10]:
        image = cv2.resize(frame, (640, 480), interpolation=cv2.INTER_AREA)
        haar = reference_haar(image)
        for face in detector.find(image):
            best = max(haar, key=lambda h: iou(face.raw, rect(h)), default=None)
            if best is not None and iou(face.raw, rect(best)) >= 0.3:
                raw.append(iou(face.raw, rect(best)))
                mapped.append(iou(haar_framing(*face.raw), rect(best)))
    assert len(mapped) >= 5
    assert np.mean(mapped) >= 0.8 and np.mean(mapped) > np.mean(raw) + 0.1
    x, y, side, side2 = haar_framing(100.0, 100.0, 100.0, 130.0)
    assert side == side2 == pytest.approx(1.10 * np.sqrt(100 * 130))  # a square
    assert x + side / 2 == pytest.approx(150 + 2.6) and y + side / 2 == pytest.approx(165 - 3.9)


def test_detect_with_yunet_on_the_real_video_overlaps_the_full_cascade_on_most_frames(
    carphone_frames: list[np.ndarray],
) -> None:
    detect = Detect(DetectConfig(detector="yunet"), 48)
    overlapping = with_face = 0
    tracks: set[int] = set()
    for i, image in enumerate(carphone_frames):
        faces = detect(Frame("cam0", i, i / 30, image))
        assert faces.crops.shape == (len(faces.boxes), 48, 48)
        tracks.update(faces.tracks)
        haar = reference_haar(image)
        if haar:
            with_face += 1
            overlapping += any(iou(rect(b.as_list()), rect(h)) >= 0.3 for b in faces.boxes for h in haar)
        landmarks = detect.landmarks("cam0")
        assert set(landmarks) <= set(faces.tracks) and all(len(p) == 5 for p in landmarks.values())
    assert with_face >= len(carphone_frames) // 3
    assert overlapping >= 0.9 * with_face, f"{overlapping}/{with_face}"
    assert len(tracks) <= 3  # one face, tracked: its id holds


def test_every_frame_with_yunet_numbers_each_box_and_keeps_its_landmarks(carphone_frames: list[np.ndarray]) -> None:
    detect = Detect(DetectConfig(detector="yunet", every_frame=True), 48)
    first = detect(Frame("cam0", 0, 0.0, carphone_frames[0]))
    second = detect(Frame("cam0", 1, 0.1, carphone_frames[0]))
    assert first.tracks == (1,) and second.tracks == (2,)  # no tracking: a new id per box
    assert first.boxes == second.boxes
    assert set(detect.landmarks("cam0")) == {2}


@pytest.mark.parametrize(
    ("key", "value"),
    [("detector", "cnn"), ("detector", "Haar"), ("yunet_score", 0.0), ("yunet_score", 1.0)],
)
def test_a_bad_detector_or_yunet_score_is_refused_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"'detect\.{key}' has an invalid value {value!r}"):
        from_dict({"detect": {key: value}})


def test_the_defaults_keep_the_papers_cascade() -> None:
    cfg = from_dict({})
    assert cfg.detect.detector == "haar" and type(Detect(cfg.detect, 48).spare).__name__ == "FaceDetector"
