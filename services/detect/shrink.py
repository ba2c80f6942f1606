"""The grey copy of a frame that scheduled detection looks at: a frame whose longer side is over
``detect.max_side`` is shrunk to it, so a 1280x720 or 1920x1080 camera costs detect about what a
640x480 one does (the rolling scan's tiles and the cascade's windows count pixels of the copy).

Only where faces are looked for changes. ``min_size`` stays a face's side in frame pixels (the
copy is searched for faces of ``min_size`` divided by the shrink); boxes are mapped back to frame
pixels; the crops for the emotion model are cut from the full-resolution frame, sharper than the
copy. A face under the cascade's 24 px window on the copy (48 frame pixels at 1280x720) is
confirmed on the frame's own pixels around where the finder saw it (``schedule.py``); the rolling
scan (``detect.finder = "cascade"``) searches the copy only and does not find it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from emopipe.messages import Box
from services.detect.detector import clip_box


def copy_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The copy's width and height: the frame's own if its longer side is at most ``max_side`` (0: no limit)."""
    longer = max(width, height)
    if not max_side or longer <= max_side:
        return width, height
    shrink = longer / max_side
    return max(1, round(width / shrink)), max(1, round(height / shrink))


@dataclass(frozen=True)
class Shrunk:
    """A frame's grey copy for detection and how its pixels map to the frame's."""

    gray: np.ndarray  # [h, w] uint8; the frame itself in grey when it is no larger than max_side
    frame_size: tuple[int, int]  # the frame's width and height
    image: np.ndarray  # the frame itself (BGR, full resolution): YuNet's input (finder.py)

    @property
    def whole(self) -> bool:
        """Whether the copy is the frame itself (no larger than ``max_side``), not shrunk."""
        return self.gray.shape[::-1] == self.frame_size

    @property
    def scale(self) -> tuple[float, float]:
        """Frame pixels per copy pixel, across and down (1.0, 1.0: the copy is the frame)."""
        height, width = self.gray.shape
        return self.frame_size[0] / width, self.frame_size[1] / height

    def face_size(self, frame_pixels: int) -> int:
        """A face side of ``frame_pixels`` in the copy, rounded up: no face found in the copy at
        this size or larger is smaller than ``frame_pixels`` once mapped back."""
        return max(1, math.ceil(frame_pixels / min(self.scale) - 1e-9))

    def to_frame(self, box: Box) -> Box | None:
        """A box of the copy in frame pixels, clipped to the frame."""
        sx, sy = self.scale
        return clip_box(box.x * sx, box.y * sy, box.w * sx, box.h * sy, *self.frame_size)


def shrunk_grey(image: np.ndarray, max_side: int) -> Shrunk:
    """The grey copy of a BGR frame, its longer side at most ``max_side`` (0: the whole frame).
    Grey first, then shrunk: a third of the pixels to average (2 ms instead of 4 at 1920x1080)."""
    height, width = image.shape[:2]
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    size = copy_size(width, height, max_side)
    if size != (width, height):
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return Shrunk(gray, (width, height), image)


def shrunk(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` shrunk to ``size`` (width, height): halved by area averaging while it is at least
    twice as large, then the rest (under 2x) linearly. OpenCV's area resize is fast only by
    exactly 2: a 1280x720 BGR frame to 427x240 took 6.7 ms in one step, halved and then resized
    linearly 0.5 ms (the area step alone, to 640x360, 0.4 ms; 1920x1080 by 4 in one step 4.3 ms).
    A frame exactly twice ``size`` gets the one area resize, as before."""
    width, height = size
    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if (image.shape[1], image.shape[0]) != size:
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    return image
