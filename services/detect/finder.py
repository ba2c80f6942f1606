"""Finding new faces for the cascade (``detect.finder = "yunet"``, the default): YuNet, OpenCV's CNN
face detector, looks at a shrunk copy of the frame every ``detect.finder_interval_s`` of capture
time and says where faces are; the cascade confirms each one by searching a small region around
it, and only the cascade's boxes are reported (the paper's detector and framing).

Why not the cascade's own rolling scan (``detect.finder = "cascade"``, ``schedule.py``): it cut the
frame into tiles and size bands that took turns, so a still face waited for a motion-gated tile, a
small one for a coarse step between sizes, and a face in a busy room for its turn. On four public
multi-person clips it kept 87-92% of the cascade's YuNet-confirmed boxes. YuNet sees the whole frame
at once, every face size, for 4-5 ms at 640x480 (on onnxruntime, ``yunet_net.py``; 6-10 ms with
OpenCV's DNN): with it, 94-99% of the same boxes, at half the detect CPU a frame (BENCHMARKS.md).

Between two YuNet runs, its faces the cascade has not confirmed yet (too small for ``min_size`` so
far, turned away, blurred) are *watched*: searched again every ``detect.track_redetect_s``, as a
track is, until the next run replaces them. A face walking towards the camera is confirmed on the
frame it grows to ``min_size``, not up to ``finder_interval_s`` later. Faces already tracked are
neither watched nor searched again here (their track re-detection does that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from services.detect.shrink import Shrunk
from services.detect.tracker import Rect, iou
from services.detect.yunet import YuNetDetector, input_shrink

#: the cascade confirms one of YuNet's faces in a square this much larger than it per side (a
#: fraction of its side): it may have moved since YuNet saw it
MARGIN = 0.6
#: ... among face sizes this much smaller or larger than YuNet's box (mapped to the cascade's framing)
SIZE_RANGE = 1.5
#: YuNet's faces down to this fraction of ``min_size`` are watched (a face growing towards it)
WATCH = 0.5
#: a YuNet face overlapping a track's predicted box this much is that track's face
TRACKED_IOU = 0.3
#: YuNet's input is the frame shrunk by a whole number (OpenCV's area resize has a fast path for
#: it, and YuNet is faster on sides of multiples of 32: at 640x480, shrunk 2 to 320x240 costs 0.3 ms
#: to resize and 5-11 ms to detect with OpenCV's DNN, shrunk 2.05 to 312x234 3.8 and 7-15 ms): the
#: largest that keeps a ``min_size`` face at least ``yunet.MIN_FACE_AT_INPUT`` wide, or where that
#: input's longer side would be over this, the next (1280x720: 427x240, a 48 px face 12 px wide;
#: 1920x1080: 480x270, 72 px: 14)
INPUT_SIDE = 400


@dataclass
class Finder:
    """One camera's YuNet, its schedule and its watched faces (pixels of the detection copy)."""

    net: YuNetDetector
    interval_s: float
    redetect_s: float
    last: float = -math.inf  # capture time of the latest YuNet run
    tried: float = -math.inf  # ... of the latest search, YuNet's or the watched faces'
    watched: list[Rect] = field(default_factory=list)
    fits: bool = True  # a face of min_size fits in the frame (else YuNet, on a few pixels, is not run)

    def restart(self, min_face: int, copy: Shrunk) -> None:
        """A new picture (a cut, a new frame size): YuNet runs on the next frame. ``min_face``: the
        smallest face the cascade can find on the copy, in its pixels."""
        frame_face = min_face * min(copy.scale)
        self.fits = frame_face <= min(copy.frame_size)
        self.net.min_size = max(1, round(WATCH * frame_face))
        shrink = input_shrink(round(frame_face))
        longer = max(copy.frame_size)
        whole = max(1, math.floor(shrink))
        self.net.shrink = whole if longer / whole <= INPUT_SIDE else math.ceil(shrink)
        self.last = self.tried = -math.inf
        self.watched = []

    def candidates(self, copy: Shrunk, ts: float, tracks: list[Rect], limit: int) -> list[Rect]:
        """Where the cascade should look for new faces in this frame: YuNet's faces when its run is
        due, else the watched ones when their search is due, else nowhere; never where a track is;
        the ``limit`` largest at most."""
        if not self.fits:
            return []
        if ts - self.last >= self.interval_s:
            self.last = self.tried = ts
            sx, sy = copy.scale
            found = self.net.find(copy.image)
            boxes = [(f.box.x / sx, f.box.y / sy, f.box.w / sx, f.box.h / sy) for f in found]
            self.watched = sorted(boxes, key=lambda b: -b[2])[:limit]
        elif ts - self.tried >= self.redetect_s:
            self.tried = ts
        else:
            return []
        self.watched = [b for b in self.watched if all(iou(b, t) < TRACKED_IOU for t in tracks)]
        return self.watched
