"""YuNet face detection (``detect.detector = "yunet"``): OpenCV's CNN face detector on a shrunk copy
of every frame, its boxes mapped to the Haar cascade's framing, face ids from the tracker.

The model ships in this package (``models/``, MIT, provenance and sha256 in ``models/README.md``).
YuNet finds faces of about 10 to 300 px at its input size, so the frame is shrunk until a face of
``detect.min_size`` (full-frame pixels, a Haar-framed side) is ``MIN_FACE_AT_INPUT`` pixels wide:
at 640x480 and the default 40 px, a 312x234 copy, 4-6 ms a frame on one core (``yunet_net.py``).
At that cost it runs on every frame, so there is no scan schedule: a face is found on the frame it
appears. The copy's longer side is also at most ``detect.max_side``, so a 1920x1080 camera costs
what a 1280x720 one does (its faces under about 60 px are then too small for YuNet).

The emotion model learnt from Haar-like framing (a square around brows to chin), while YuNet's
box is a taller, narrower one; each box is mapped to that framing (``haar_framing``) with the
mean scale and offset measured between YuNet's and the full-frame cascade's boxes of the same
faces (``python -m deploy.yunet_framing``; BENCHMARKS.md). The five landmarks are kept on each
``YuNetFace``, in full-frame pixels, for alignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emopipe.config import DetectConfig
from emopipe.messages import Box
from services.detect.detector import clip_box
from services.detect.shrink import shrunk
from services.detect.tracker import TrackedFace, Tracker
from services.detect.yunet_net import YuNetNet

MODEL = Path(__file__).resolve().parent / "models" / "face_detection_yunet_2026may.onnx"
MODEL_BYTES = 229_738  # the shipped file's size (models/README.md has its sha256)

#: the frame is shrunk so that a ``min_size`` face is this wide at YuNet's input: at 16 px YuNet
#: scores 0.7+ on all of 3,995 faces of real frames, at 14 px on 99%, at 8 px on 63% (BENCHMARKS.md);
#: 15 makes 640x480 at the default 40 px a 312x234 copy (YuNet pads its input to 32s: 320x256)
MIN_FACE_AT_INPUT = 15
#: overlapping YuNet boxes above this IoU are one face (OpenCV's non-maximum suppression)
NMS_IOU = 0.3
#: at most this many faces a frame
TOP_K = 100

#: the Haar cascade's square box of a face against YuNet's (x, y, w, h), measured on 1,441 pairs of
#: the same faces at 640x480 (python -m deploy.yunet_framing; BENCHMARKS.md): side = HAAR_SIDE *
#: sqrt(w * h) (1.10, sd 0.034; 1.10-1.12 per video, where side / w ranges 1.27-1.33), centre moved by
#: HAAR_DX * w and HAAR_DY * h (the means of the four videos' means: franck, 960 of the pairs, alone
#: gives 0.062 w); mean IoU with the cascade's box 0.72 -> 0.91
HAAR_SIDE = 1.10
HAAR_DX = 0.026
HAAR_DY = -0.030
#: a YuNet box is this much narrower than its Haar-framed square (side / w), for min_size
HAAR_SIDE_PER_WIDTH = 1.30

Point = tuple[float, float]


@dataclass(frozen=True)
class YuNetFace:
    """One face of a frame, in full-frame pixels: ``box`` in the emotion model's (Haar) framing,
    clipped to the frame; ``raw`` YuNet's own box; ``landmarks`` right eye, left eye, nose tip,
    right and left mouth corners (the person's right: the left of the picture)."""

    box: Box
    raw: tuple[float, float, float, float]
    landmarks: tuple[Point, Point, Point, Point, Point]
    score: float


def haar_framing(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
    """YuNet's box of a face as the cascade frames it: a square, larger, a little higher."""
    side = HAAR_SIDE * math.sqrt(w * h)
    cx = x + w / 2 + HAAR_DX * w
    cy = y + h / 2 + HAAR_DY * h
    return cx - side / 2, cy - side / 2, side, side


def input_shrink(min_size: int) -> float:
    """How much a frame is shrunk for YuNet: a ``min_size`` face becomes ``MIN_FACE_AT_INPUT`` wide."""
    return max(1.0, min_size / HAAR_SIDE_PER_WIDTH / MIN_FACE_AT_INPUT)


class YuNetDetector:
    """YuNet loaded once from the package; not safe to share between threads (one per camera)."""

    def __init__(
        self, min_size: int, score: float, shrink: float = 0.0, model: Path = MODEL, max_side: int = 0
    ) -> None:
        """``max_side``: YuNet's input is shrunk further if its longer side is over this (0: never)."""
        if not model.is_file() or model.stat().st_size != MODEL_BYTES:
            raise FileNotFoundError(f"the YuNet model {model} is missing or damaged (reinstall emopipe)")
        self.net = YuNetNet(model, score, NMS_IOU, TOP_K)
        self.min_size = min_size
        self.shrink = shrink or input_shrink(min_size)
        self.max_side = max_side

    def find(self, image: np.ndarray) -> list[YuNetFace]:
        """The faces of a BGR frame at least ``min_size`` (Haar-framed side) in full-frame pixels."""
        height, width = image.shape[:2]
        shrink = max(self.shrink, max(width, height) / self.max_side) if self.max_side else self.shrink
        size = (max(1, round(width / shrink)), max(1, round(height / shrink)))
        found = self.net.detect(shrunk(image, size))
        if found is None:
            return []
        sx, sy = width / size[0], height / size[1]
        faces = []
        for row in found:
            if not np.isfinite(row[:15]).all():  # an input of a few pixels can give NaN rows
                continue
            raw = (float(row[0]) * sx, float(row[1]) * sy, float(row[2]) * sx, float(row[3]) * sy)
            x, y, w, h = haar_framing(*raw)
            box = clip_box(x, y, w, h, width, height)
            if box is None or w < self.min_size:
                continue
            faces.append(YuNetFace(box, raw, _landmarks(row, sx, sy), float(row[14])))
        return faces


def _landmarks(row: np.ndarray, sx: float, sy: float) -> tuple[Point, Point, Point, Point, Point]:
    """The five points of one row of ``YuNetNet.detect`` (columns 4..13), in frame pixels."""
    p = [(float(row[4 + 2 * i]) * sx, float(row[5 + 2 * i]) * sy) for i in range(5)]
    return p[0], p[1], p[2], p[3], p[4]


@dataclass
class YuNetCamera:
    """One camera's YuNet detection on every frame and its face tracks; ``landmarks``: the latest
    frame's five points of each face the detector found in it, by track id (coasting tracks have none)."""

    detector: YuNetDetector
    tracker: Tracker
    landmarks: dict[int, tuple[Point, Point, Point, Point, Point]] = field(default_factory=dict)

    @classmethod
    def create(cls, cfg: DetectConfig) -> YuNetCamera:
        tracker = Tracker(min_iou=cfg.track_min_iou, hold_s=cfg.track_hold_s, timeout_s=cfg.track_timeout_s)
        return cls(YuNetDetector(cfg.min_size, cfg.yunet_score, max_side=cfg.max_side), tracker)

    def process(self, image: np.ndarray, ts: float) -> list[TrackedFace]:
        height, width = image.shape[:2]
        found = self.detector.find(image)
        tracked = self.tracker.update(ts, [f.box for f in found], width, height)
        by_box = {f.box: f.landmarks for f in found}
        self.landmarks = {t.track: by_box[t.box] for t in tracked if t.detected and t.box in by_box}
        return tracked
