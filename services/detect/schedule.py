"""Scheduled detection: the Haar cascade around live tracks every frame, and new faces looked for
by a finder.

A full-frame scan at 640x480 costs 45-120 ms, most of it in the smallest faces. So:

* each track's predicted box is re-detected in a region around it, shrunk so the face
  is about ``TRACK_FACE`` pixels (cheap whatever the face's size), every
  ``track_redetect_s`` (``STEADY_SLOWDOWN`` times that while it keeps being found; between two,
  the track coasts on its motion);
* new faces: ``detect.finder = "yunet"`` (the default; ``finder.py``) has YuNet say where faces
  are every ``finder_interval_s`` and the cascade confirm each one in a region around it, as
  for a track. ``detect.finder = "cascade"`` is the cascade's own rolling scan, below;
* a shot cut (over ``cut_fraction`` of a tiny copy of the frame changed from one frame to the
  next) or a new frame size ends every track and looks for faces in the whole frame at once.

The rolling scan (``finder = "cascade"``): the full scan is cut into jobs, one per (size band,
tile): band k finds faces of ``min_size * 2**k`` to ``min_size * 2**(k+1)`` pixels on the frame
shrunk by ``2**k`` (less where min_size is under ``BAND_FACE``), in tiles that overlap by the
band's largest face so no face falls between two tiles. Jobs run in turn so the whole frame is
scanned once every ``scan_interval_s`` of capture time for small faces (band 0: most of the cost)
and every ``large_scan_interval_s`` for larger ones (shrunk frames: cheap), at most
``scan_max_jobs`` of each per frame. A job whose region has not changed since it last ran
(motion gating on the tiny copy) is skipped, unless it last ran ``idle_rescan_s`` ago.

All of it runs on the frame's detection copy (``shrink.py``: a frame larger than
``detect.max_side`` shrunk to it): tracks, scan jobs, tiles and the motion copies are in
pixels of the copy, ``min_size`` is converted to them, and the faces reported are mapped
back to frame pixels. With the finder, a face too small for the cascade's window on a shrunk copy
is looked for on the frame's own pixels (its region only): at 1280x720 a face of 40-48 px is 20-24
px of the copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from emopipe.config import DetectConfig
from emopipe.messages import Box
from services.detect.detector import FaceDetector, clip_box
from services.detect.finder import MARGIN as FINDER_MARGIN
from services.detect.finder import SIZE_RANGE as FINDER_SIZE_RANGE
from services.detect.finder import Finder
from services.detect.shrink import Shrunk
from services.detect.tracker import Rect, Track, TrackedFace, Tracker, iou
from services.detect.yunet import YuNetDetector

#: re-detection shrinks a track's region so its face is about this many pixels
TRACK_FACE = 60
#: and looks for faces this much smaller or larger than the predicted box
TRACK_SIZE_RANGE = 1.25
#: a track its last re-detection found is re-detected this much less often than
#: ``track_redetect_s``; one it missed is tried again at that pace (the cascade misses a face now
#: and then: the tries within ``track_hold_s`` keep its box). On six clips, one to six people
#: (BENCHMARKS.md): a third fewer re-detections at 30 FPS, recall within 0.3 points or better
STEADY_SLOWDOWN = 1.5
#: the motion-gating copy of the frame is shrunk by this factor
MOTION_SHRINK = 8
#: a pixel of the tiny copy counts as changed when it differs by more than this (0..255)
MOTION_LEVEL = 12
#: detections overlapping a kept one by more than this are the same face
SAME_FACE_IOU = 0.3
#: a size band's frame is shrunk (by a power of two) no further than to make its smallest face at
#: least this many pixels: the cascade (24 px window) finds faces reliably from here (the default
#: min_size, which the schedule was tuned at). Only a smaller min_size (a 1280x720 frame's 40 px are
#: 24 on its 640x360 copy) changes the bands: shrunk by 2**k there, a 210 px face was looked for at
#: 26 px on an 80x45 picture and not found; by 4.8 (to exactly 40 px), on 13 first scans of 40
BAND_FACE = 40


@dataclass(frozen=True)
class ScanJob:
    region: Box  # pixels of the detection copy
    shrink: float
    min_size: int  # face size in pixels of the detection copy
    max_size: int  # 0: no upper limit


def plan_scan(width: int, height: int, min_size: int, tile: int) -> list[ScanJob]:
    """The jobs of one full scan, largest faces (cheapest jobs) first."""
    jobs: list[ScanJob] = []
    band = 0
    while True:
        lo = min_size * 2**band
        shrink = float(2**band if min_size >= BAND_FACE else 2 ** max(0, (lo // BAND_FACE).bit_length() - 1))
        last = 2 * lo >= min(width, height)
        hi = 0 if last else 2 * lo
        side = max(1, round(tile * 2**band))  # as many of the band's faces across as band 0's: one job's cost
        overlap = 2 * lo
        jobs.extend(ScanJob(r, shrink, lo, hi) for r in tiles(width, height, side, overlap))
        if last:
            break
        band += 1
    return jobs[::-1]


def tiles(width: int, height: int, side: int, overlap: int) -> list[Box]:
    """Tiles of ``side`` pixels (or the whole frame) covering it, neighbours overlapping by ``overlap``."""

    def starts(length: int) -> list[int]:
        if length <= side:
            return [0]
        step = max(1, side - overlap)
        count = math.ceil((length - side) / step) + 1
        return sorted({min(i * step, length - side) for i in range(count)})

    return [Box(x, y, min(side, width), min(side, height)) for y in starts(height) for x in starts(width)]


@dataclass
class ScanQueue:
    """Jobs taking turns so that all of them run once every ``interval_s`` of capture time."""

    jobs: list[int]  # indices into CameraDetector.jobs
    interval_s: float
    cursor: int = 0
    credit: float = 0.0

    def due(self, dt: float, limit: int) -> list[int]:
        if not self.jobs:
            return []
        self.credit = min(self.credit + len(self.jobs) * min(dt, self.interval_s) / self.interval_s, len(self.jobs))
        out: list[int] = []
        while self.credit >= 1.0 and len(out) < limit:
            out.append(self.jobs[self.cursor])
            self.cursor = (self.cursor + 1) % len(self.jobs)
            self.credit -= 1.0
        return out


@dataclass
class CameraDetector:
    """Per-camera state: its tracker, its finder (None: the rolling scan) or its rolling scan
    and the motion references, all in pixels of the detection copy (``min_size``: the config's,
    converted to them)."""

    cfg: DetectConfig
    detector: FaceDetector
    tracker: Tracker
    finder: Finder | None = None
    jobs: list[ScanJob] = field(default_factory=list)
    queues: list[ScanQueue] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)  # the frame's (not the copy's): a new one is a new picture
    min_size: int = 0
    #: the smallest face confirmed, in pixels of the copy: under the cascade's window on a shrunk
    #: copy with the finder (such a face is confirmed on the frame itself, ``_around``)
    smallest: int = 0
    last_ts: float | None = None
    last_run: list[float] = field(default_factory=list)
    references: list[np.ndarray | None] = field(default_factory=list)
    last_tiny: np.ndarray | None = None  # the previous frame's motion copy (cut detection)

    @classmethod
    def create(cls, cfg: DetectConfig, detector: FaceDetector, net: YuNetDetector | None = None) -> CameraDetector:
        """``net``: the finder's YuNet (one per camera), with ``detect.finder = "yunet"``."""
        tracker = Tracker(min_iou=cfg.track_min_iou, hold_s=cfg.track_hold_s, timeout_s=cfg.track_timeout_s)
        found = Finder(net, cfg.finder_interval_s, cfg.track_redetect_s) if net is not None else None
        return cls(cfg, detector, tracker, found)

    def process(self, copy: Shrunk, ts: float) -> list[TrackedFace]:
        """The faces of one frame (its detection copy), in frame pixels."""
        gray = copy.gray
        height, width = gray.shape
        tiny = cv2.resize(gray, None, fx=1 / MOTION_SHRINK, fy=1 / MOTION_SHRINK, interpolation=cv2.INTER_AREA)
        if copy.frame_size != self.size or self._is_cut(tiny):
            self.cut(copy)  # a new picture: no box of the old one carries over
        self.last_tiny = tiny
        tracks = self.tracker.predicted(ts)
        found = self._redetect_tracks(copy, ts, tracks)
        if self.finder is not None:
            found += self._find(self.finder, copy, ts, [box for _, box in tracks])
        else:
            found += self._scan(gray, tiny, ts)
        faces = self.tracker.update(ts, same_faces_merged(found), width, height)
        for track, _ in tracks:
            if track.tried == ts:
                track.found = track.detected
        if copy.whole:
            return faces
        mapped = ((face, copy.to_frame(face.box)) for face in faces)
        return [TrackedFace(face.track, box, face.detected) for face, box in mapped if box is not None]

    def _is_cut(self, tiny: np.ndarray) -> bool:
        """A shot cut: most of the frame changed at once (a moving camera changes a third at most)."""
        last = self.last_tiny
        if last is None or last.shape != tiny.shape or self.cfg.cut_fraction >= 1.0:
            return False
        changed = np.count_nonzero(cv2.absdiff(tiny, last) > MOTION_LEVEL)
        return bool(changed > self.cfg.cut_fraction * tiny.size)

    def cut(self, copy: Shrunk) -> None:
        """The picture changed as a whole: every track ends and the whole frame is scanned now."""
        self.tracker.end_all()
        self.last_ts = None
        self._replan(copy)

    def _replan(self, copy: Shrunk) -> None:
        """The copy's ``min_size``, then the finder's restart or the rolling scan's plan."""
        self.size = copy.frame_size
        # never under the cascade's window: band k looks for faces of min_size * 2**k on the copy
        # shrunk by 2**k, where a face under the window's side is too small to be found
        self.min_size = max(copy.face_size(self.cfg.min_size), self.detector.window)
        fine = self.finder is not None and not copy.whole
        self.smallest = copy.face_size(self.cfg.min_size) if fine else self.min_size
        if self.finder is not None:
            self.finder.restart(self.min_size, copy)
        else:
            self._plan_scan(copy)

    def _plan_scan(self, copy: Shrunk) -> None:
        """Small faces (the copy's full resolution, most of the cost) and large ones (shrunk
        further, cheap, so scanned more often) take turns in queues of their own."""
        height, width = copy.gray.shape
        # a copy's smaller faces take a smaller tile: a job is as many faces across, and costs as
        # much, as at the frame's own size (scan_tile / min_size); there are more of them instead
        tile = max(round(self.cfg.scan_tile * min(1.0, self.min_size / self.cfg.min_size)), 2 * self.min_size + 1)
        self.jobs = plan_scan(width, height, self.min_size, tile)
        # by shrink, not band: on a copy whose bands start under BAND_FACE, band 1 is searched at
        # full resolution too, as costly a job as band 0's (queued with the large ones, it ran
        # every frame and doubled detect's CPU at 1280x720)
        small = [i for i, j in enumerate(self.jobs) if j.shrink == 1.0]
        large = [i for i, j in enumerate(self.jobs) if j.shrink > 1.0]
        self.queues = [
            ScanQueue(large, self.cfg.large_scan_interval_s, credit=len(large)),  # the first frame: all of it
            ScanQueue(small, self.cfg.scan_interval_s, credit=len(small)),
        ]
        self.last_run = [-math.inf] * len(self.jobs)
        self.references = [None] * len(self.jobs)

    def _redetect_tracks(self, copy: Shrunk, ts: float, tracks: list[tuple[Track, Rect]]) -> list[Box]:
        found: list[Box] = []
        every = self.cfg.track_redetect_s
        due = [(t, box) for t, box in tracks if ts - t.tried >= (every * STEADY_SLOWDOWN if t.found else every)]
        for track, box in sorted(due, key=lambda tb: tb[0].tried)[: self.cfg.max_tracks]:
            track.tried = ts
            found.extend(self._around(copy, box, self.cfg.track_margin, TRACK_SIZE_RANGE))
        return found

    def _find(self, finder: Finder, copy: Shrunk, ts: float, tracks: list[Rect]) -> list[Box]:
        """The finder's new faces, each confirmed by the cascade around it."""
        candidates = finder.candidates(copy, ts, tracks, self.cfg.max_tracks)
        return [box for c in candidates for box in self._around(copy, c, FINDER_MARGIN, FINDER_SIZE_RANGE)]

    def _around(self, copy: Shrunk, box: Rect, margin: float, size_range: float) -> list[Box]:
        """The cascade's faces in a square around ``box`` grown by ``margin`` of its side, of sizes
        within ``size_range`` of its side (and not under ``smallest``), on the region shrunk so that
        the face is about ``TRACK_FACE`` pixels; pixels of the copy. Faces too small for the cascade's
        window on the copy are looked for on the frame itself (the region's pixels only)."""
        height, width = copy.gray.shape
        x, y, w, h = box
        size = max(w, h, self.smallest)
        half = size * (0.5 + margin)
        region = _clip_region(x + w / 2 - half, y + h / 2 - half, 2 * half, 2 * half, width, height)
        if region is None:
            return []
        low = max(self.smallest, round(size / size_range))
        high = round(size * size_range)
        if low < self.detector.window:
            return self._around_in_frame(copy, region, size, low, high)
        return self.detector.find(copy.gray, region, max(1.0, size / TRACK_FACE), low, high)

    def _around_in_frame(self, copy: Shrunk, region: Box, size: float, low: int, high: int) -> list[Box]:
        """``_around`` for a face too small for the copy: the region of the frame (made grey alone),
        searched at the frame's resolution; sizes and boxes converted between the two."""
        sx, sy = copy.scale
        scale = min(sx, sy)
        frame = _clip_region(region.x * sx, region.y * sy, region.w * sx, region.h * sy, *copy.frame_size)
        if frame is None:
            return []
        image = copy.image[frame.y : frame.y + frame.h, frame.x : frame.x + frame.w]
        patch = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        whole = Box(0, 0, frame.w, frame.h)
        found = self.detector.find(
            patch,
            whole,
            max(1.0, size * scale / TRACK_FACE),
            max(self.cfg.min_size, round(low * scale)),
            round(high * scale),
        )
        height, width = copy.gray.shape
        boxes = (clip_box((frame.x + b.x) / sx, (frame.y + b.y) / sy, b.w / sx, b.h / sy, width, height) for b in found)
        return [b for b in boxes if b is not None]

    def _scan(self, gray: np.ndarray, tiny: np.ndarray, ts: float) -> list[Box]:
        dt = max(0.0, ts - self.last_ts) if self.last_ts is not None else 0.0
        first = self.last_ts is None
        self.last_ts = ts
        found: list[Box] = []
        for queue in self.queues:
            for index in queue.due(dt, len(queue.jobs) if first else self.cfg.scan_max_jobs):
                job = self.jobs[index]
                patch = _tiny_region(tiny, job.region)
                if ts - self.last_run[index] < self.cfg.idle_rescan_s and not self._changed(index, patch):
                    continue
                self.references[index] = patch.copy()
                self.last_run[index] = ts
                found.extend(
                    self.detector.find(
                        gray, job.region, job.shrink, job.min_size, job.max_size, self.cfg.scan_scale_factor
                    )
                )
        return found

    def _changed(self, index: int, patch: np.ndarray) -> bool:
        reference = self.references[index]
        if reference is None or reference.shape != patch.shape:
            return True
        moved = np.count_nonzero(cv2.absdiff(patch, reference) > MOTION_LEVEL)
        return bool(moved > self.cfg.motion_fraction * patch.size)


def _tiny_region(tiny: np.ndarray, region: Box) -> np.ndarray:
    x0, y0 = region.x // MOTION_SHRINK, region.y // MOTION_SHRINK
    x1 = max(x0 + 1, (region.x + region.w) // MOTION_SHRINK)
    y1 = max(y0 + 1, (region.y + region.h) // MOTION_SHRINK)
    return tiny[y0:y1, x0:x1]


def _clip_region(x: float, y: float, w: float, h: float, width: int, height: int) -> Box | None:
    x0, y0 = max(0, int(x)), max(0, int(y))
    x1, y1 = min(width, int(math.ceil(x + w))), min(height, int(math.ceil(y + h)))
    return Box(x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def same_faces_merged(boxes: list[Box]) -> list[Box]:
    """One box per face: a box overlapping an earlier kept one is the same face (earlier wins)."""
    kept: list[Box] = []
    for box in boxes:
        b = (float(box.x), float(box.y), float(box.w), float(box.h))
        if all(iou(b, (k.x, k.y, k.w, k.h)) <= SAME_FACE_IOU for k in kept):
            kept.append(box)
    return kept
