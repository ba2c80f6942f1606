"""Haar-cascade face detection and the paper's preprocessing (crop, grey, resize to the model's input size)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from emopipe.config import DetectConfig
from emopipe.messages import Box

CASCADE_FILE = "haarcascade_frontalface_default.xml"


class FaceDetector:
    """OpenCV's frontal-face cascade, loaded once, with the parameters from config; crops of
    ``face_size`` pixels a side (the emotion model's ``input_size``)."""

    def __init__(self, cfg: DetectConfig, face_size: int) -> None:
        path = Path(cv2.data.haarcascades) / CASCADE_FILE  # type: ignore[attr-defined]
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise FileNotFoundError(f"the Haar cascade {path} is missing or not a cascade (reinstall opencv-python)")
        self.cfg = cfg
        self.face_size = face_size
        self.window = min(self.cascade.getOriginalWindowSize())  # the smallest face it finds (24 px)

    def detect(self, image: np.ndarray) -> tuple[tuple[Box, ...], np.ndarray]:
        """Full-frame detection (the paper's): boxes clipped to the frame and their grey crops."""
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        height, width = gray.shape
        boxes = self.find(gray, Box(0, 0, width, height), self.cfg.downscale, self.cfg.min_size)
        return tuple(boxes), grey_crops(gray, boxes, self.face_size)

    def find(
        self, gray: np.ndarray, region: Box, shrink: float, min_size: int, max_size: int = 0, scale_factor: float = 0.0
    ) -> list[Box]:
        """Faces of ``min_size``..``max_size`` frame pixels (0: no limit) inside ``region``,
        searched on the region shrunk by ``shrink`` (``scale_factor`` 0: the configured one); boxes in frame pixels."""
        patch = gray[region.y : region.y + region.h, region.x : region.x + region.w]
        if shrink > 1.0:
            size = (max(1, round(region.w / shrink)), max(1, round(region.h / shrink)))
            patch = cv2.resize(patch, size, interpolation=cv2.INTER_AREA)
        min_side = max(1, round(min_size / shrink))
        max_side = round(max_size / shrink) if max_size else 0
        if min(patch.shape) < min_side:
            return []
        found = self.cascade.detectMultiScale(
            patch,
            scaleFactor=scale_factor or self.cfg.scale_factor,
            minNeighbors=self.cfg.min_neighbors,
            minSize=(min_side, min_side),
            maxSize=(max_side, max_side),
        )
        height, width = gray.shape
        boxes = (
            clip_box(region.x + x * shrink, region.y + y * shrink, w * shrink, h * shrink, width, height)
            for x, y, w, h in found
        )
        return [b for b in boxes if b is not None]


def grey_crops(image: np.ndarray, boxes: list[Box] | tuple[Box, ...], size: int) -> np.ndarray:
    """[N, size, size] uint8 crops of ``boxes`` (inside the frame) from a grey or a BGR frame: of
    a BGR one only the faces are made grey (the same pixels as the whole frame made grey first,
    without converting a 1920x1080 frame that was detected on a shrunk copy)."""
    crops = np.zeros((len(boxes), size, size), dtype=np.uint8)
    for i, box in enumerate(boxes):
        patch = image[box.y : box.y + box.h, box.x : box.x + box.w]
        if patch.ndim == 3:
            patch = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY)
        crops[i] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return crops


def clip_box(x: float, y: float, w: float, h: float, width: int, height: int) -> Box | None:
    """Clip a box to the frame, keeping the part inside it; None if nothing is left."""
    x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
    x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(x0, y0, x1 - x0, y1 - y0)
