"""Scheduled detection over time: what happens when the picture changes as a whole."""

from __future__ import annotations

import cv2
import numpy as np

from emopipe.config import DetectConfig
from emopipe.messages import Box, Frame
from services.detect.main import Detect

FPS = 30.0


def iou(a: Box, b: Box) -> float:
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / float(a.w * a.h + b.w * b.h - inter)


def full_cascade(image: np.ndarray) -> list[Box]:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return [Box(*map(int, b)) for b in cascade.detectMultiScale(gray, 1.1, 5, minSize=(40, 40))]


def test_a_new_frame_size_ends_the_old_tracks_and_the_new_faces_are_found_in_it(
    carphone_frames: list[np.ndarray],
) -> None:
    """A folder whose images change size: the first frame at the new size has no box of the old picture."""
    detect = Detect(DetectConfig(), 48)
    small = carphone_frames[:10]
    for seq, image in enumerate(small):
        faces = detect(Frame("cam0", seq, seq / FPS, image))
    assert len(faces.boxes) == 1
    old_track = faces.tracks[0]
    big = cv2.resize(carphone_frames[10], None, fx=1.75, fy=1.75)  # the face moves and grows with the picture
    (want,) = full_cascade(big)
    faces = detect(Frame("cam0", 10, 10 / FPS, big))
    assert len(faces.boxes) == 1
    assert faces.tracks[0] != old_track
    assert iou(faces.boxes[0], want) > 0.5


def scene(face: np.ndarray, background: np.ndarray, x: int, y: int) -> np.ndarray:
    out = background.copy()
    out[y : y + face.shape[0], x : x + face.shape[1]] = face
    return out


def backgrounds() -> tuple[np.ndarray, np.ndarray]:
    """Two rooms: a smooth grey one and a textured one (a shot cut changes most of the picture)."""
    rng = np.random.default_rng(0)
    plain = np.full((360, 640, 3), 90, np.uint8)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (360, 640, 3), dtype=np.uint8), (0, 0), 3)
    return plain, texture


def test_a_shot_cut_ends_the_old_tracks_and_the_new_face_is_found_within_2_frames(
    carphone_frames: list[np.ndarray],
) -> None:
    plain, texture = backgrounds()
    detect = Detect(DetectConfig(), 48)
    before = [scene(f, plain, 40, 60) for f in carphone_frames[:15]]  # a face on the left
    after = [scene(cv2.flip(f, 1), texture, 420, 180) for f in carphone_frames[15:25]]  # a new one, right
    for seq, image in enumerate(before):
        faces = detect(Frame("cam0", seq, seq / FPS, image))
    assert len(faces.boxes) == 1 and faces.boxes[0].x < 320
    old = faces.tracks[0]
    reported = []
    for seq, image in enumerate(after, start=len(before)):
        faces = detect(Frame("cam0", seq, seq / FPS, image))
        reported.append(faces)
    assert all(b.x > 320 for f in reported for b in f.boxes), "no box of the old shot is carried past the cut"
    assert all(old not in f.tracks for f in reported)
    found = [i for i, f in enumerate(reported) if f.boxes]
    assert found and found[0] <= 1, f"the new face first found {found[:1]} frames after the cut"
    (want,) = full_cascade(after[found[0]])
    assert iou(reported[found[0]].boxes[0], want) > 0.5


def test_without_cut_detection_the_old_track_coasts_past_the_cut(carphone_frames: list[np.ndarray]) -> None:
    """What the cut detection is for: with ``cut_fraction = 1`` (never a cut) the old face's box
    is still reported on the new shot, where no face is."""
    plain, texture = backgrounds()
    detect = Detect(DetectConfig(cut_fraction=1.0), 48)
    for seq, f in enumerate(carphone_frames[:15]):
        faces = detect(Frame("cam0", seq, seq / FPS, scene(f, plain, 40, 60)))
    old = faces.tracks[0]
    faces = detect(Frame("cam0", 15, 15 / FPS, scene(cv2.flip(carphone_frames[15], 1), texture, 420, 180)))
    assert old in faces.tracks and any(b.x < 320 for b in faces.boxes)


def test_a_still_face_that_appears_is_found_within_the_scan_interval(carphone_frames: list[np.ndarray]) -> None:
    """Nothing moves before or after: the face appears once and stays (a person who sat down)."""
    plain, _ = backgrounds()
    cfg = DetectConfig()
    for x, y in ((20, 20), (300, 100), (440, 200)):
        detect = Detect(cfg, 48)
        empty, still = plain, scene(carphone_frames[30], plain, x, y)
        for seq in range(int(3 * FPS)):  # 3 s of an empty room: every tile's reference is settled
            assert detect(Frame("cam0", seq, seq / FPS, empty)).boxes == ()
        first = int(3 * FPS)
        found = None
        for seq in range(first, first + int(2 * FPS)):
            if detect(Frame("cam0", seq, seq / FPS, still)).boxes:
                found = seq - first
                break
        assert found is not None and found / FPS <= cfg.scan_interval_s, (x, y, found)
