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
