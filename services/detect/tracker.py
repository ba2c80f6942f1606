"""Face tracks: one id per face while it stays in view (overlap association, constant-velocity motion).

A small SORT-style tracker of our own rather than norfair or motpy: those count missed
*frames*, while a live camera drops frames unevenly, so here every duration is in
seconds of capture time; and they pull scipy/filterpy into the serving image for what
is a greedy match of a handful of boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emopipe.messages import Box
from services.detect.detector import clip_box

#: a box as x, y, w, h in pixels
Rect = tuple[float, float, float, float]

#: how much of a new velocity estimate replaces the old one on each match
VELOCITY_GAIN = 0.5


@dataclass
class Track:
    id: int
    box: Rect  # x, y, w, h at ``seen``
    first_seen: float
    seen: float  # capture time of the last detection
    velocity: tuple[float, float] = (0.0, 0.0)  # centre, pixels per second
    hits: int = 1
    detected: bool = True  # found by the detector in the latest frame (not coasted)
    tried: float = float("-inf")  # capture time of the last re-detection around the track
    found: bool = False  # that re-detection found the face

    def predict(self, ts: float, coast_s: float = float("inf")) -> Rect:
        """The box at ``ts``, moved by the velocity for at most ``coast_s`` since last seen."""
        dt = min(ts - self.seen, coast_s)
        x, y, w, h = self.box
        return x + self.velocity[0] * dt, y + self.velocity[1] * dt, w, h


@dataclass(frozen=True)
class TrackedFace:
    track: int
    box: Box
    detected: bool  # False: the track coasted through a frame where the detector missed it


def iou(a: Rect, b: Rect) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Tracker:
    """Tracks of one camera. ``update`` takes one frame's detections, in capture-time order."""

    min_iou: float = 0.2  # a detection continues a track only if it overlaps the prediction this much
    hold_s: float = 0.3  # a missed face keeps its (predicted) box this long
    timeout_s: float = 2.0  # a track unseen this long has ended (until then it is looked for)
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1

    def predicted(self, ts: float) -> list[tuple[Track, Rect]]:
        """Where each live track's face is looked for: a face unseen past ``hold_s`` is looked
        for where it was last heading, not carried further off by a stale velocity (faces
        that turn away come back about where they left)."""
        return [(t, t.predict(ts, self.hold_s)) for t in self.tracks]

    def update(self, ts: float, detections: list[Box], width: int, height: int) -> list[TrackedFace]:
        """Associate ``detections`` with the live tracks; returns the faces to report for this frame."""
        self._expire(ts)
        boxes = [(float(b.x), float(b.y), float(b.w), float(b.h)) for b in detections]
        pairs = sorted(
            (
                (iou(pred, det), ti, di)
                for ti, (_, pred) in enumerate(self.predicted(ts))
                for di, det in enumerate(boxes)
            ),
            reverse=True,
        )
        matched_tracks: set[int] = set()
        matched_dets: set[int] = set()
        for overlap, ti, di in pairs:
            if overlap < self.min_iou:
                break
            if ti in matched_tracks or di in matched_dets:
                continue
            matched_tracks.add(ti)
            matched_dets.add(di)
            self._continue(self.tracks[ti], boxes[di], ts)
        for ti, track in enumerate(self.tracks):
            if ti not in matched_tracks:
                track.detected = False
        for di, det in enumerate(boxes):
            if di not in matched_dets:
                self.tracks.append(Track(id=self.next_id, box=det, first_seen=ts, seen=ts))
                self.next_id += 1
        return self._report(ts, width, height)

    def end_all(self) -> None:
        """Every track ends (a cut, a new frame size); new faces get new ids."""
        self.tracks = []

    def _continue(self, track: Track, det: Rect, ts: float) -> None:
        dt = ts - track.seen
        if dt > 0:
            old_cx, old_cy = track.box[0] + track.box[2] / 2, track.box[1] + track.box[3] / 2
            vx = (det[0] + det[2] / 2 - old_cx) / dt
            vy = (det[1] + det[3] / 2 - old_cy) / dt
            g = VELOCITY_GAIN if track.hits > 1 else 1.0
            track.velocity = (
                track.velocity[0] + g * (vx - track.velocity[0]),
                track.velocity[1] + g * (vy - track.velocity[1]),
            )
        track.box = det
        track.seen = ts
        track.hits += 1
        track.detected = True

    def _expire(self, ts: float) -> None:
        self.tracks = [t for t in self.tracks if ts - t.seen <= self.timeout_s]

    def _report(self, ts: float, width: int, height: int) -> list[TrackedFace]:
        out = []
        for track in self.tracks:
            if not track.detected and ts - track.seen > self.hold_s:
                continue
            box = clip_box(*(track.box if track.detected else track.predict(ts)), width, height)
            if box is not None:
                out.append(TrackedFace(track.id, box, track.detected))
        return out
