"""Haar-cascade face detection and the paper's preprocessing (crop, grey, resize to 48x48)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from emopipe.config import DetectConfig
from emopipe.messages import Box

CASCADE_FILE = "haarcascade_frontalface_default.xml"


class FaceDetector:
    """OpenCV's frontal-face cascade, loaded once, with the parameters from config."""

    def __init__(self, cfg: DetectConfig) -> None:
        path = Path(cv2.data.haarcascades) / CASCADE_FILE  # type: ignore[attr-defined]
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path}")
        self.cfg = cfg

    def detect(self, image: np.ndarray) -> tuple[tuple[Box, ...], np.ndarray]:
        """Boxes in frame pixels (clipped to the frame) and their [N, S, S] uint8 grey crops."""
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        boxes = self._find(gray)
        size = self.cfg.face_size
        crops = np.zeros((len(boxes), size, size), dtype=np.uint8)
        for i, box in enumerate(boxes):
            patch = gray[box.y : box.y + box.h, box.x : box.x + box.w]
            crops[i] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
        return boxes, crops

    def _find(self, gray: np.ndarray) -> tuple[Box, ...]:
        scale = self.cfg.downscale
        small = gray
        if scale > 1.0:
            small = cv2.resize(gray, None, fx=1.0 / scale, fy=1.0 / scale, interpolation=cv2.INTER_AREA)
        min_side = max(1, round(self.cfg.min_size / scale))
        found = self.cascade.detectMultiScale(
            small,
            scaleFactor=self.cfg.scale_factor,
            minNeighbors=self.cfg.min_neighbors,
            minSize=(min_side, min_side),
        )
        height, width = gray.shape
        boxes = (clip_box(x * scale, y * scale, w * scale, h * scale, width, height) for x, y, w, h in found)
        return tuple(b for b in boxes if b is not None)


def clip_box(x: float, y: float, w: float, h: float, width: int, height: int) -> Box | None:
    """Clip a box to the frame, keeping the part inside it; None if nothing is left."""
    x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
    x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(x0, y0, x1 - x0, y1 - y0)
