"""Scheduled detection over time: what happens when the picture changes as a whole."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from emopipe.config import FINDERS, DetectConfig
from emopipe.messages import Box, Frame
from services.detect import finder as finder_mod
from services.detect import schedule
from services.detect.main import Detect
from services.detect.shrink import Shrunk
from services.detect.tracker import Rect, Track

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


@pytest.mark.parametrize("finder", FINDERS)
def test_a_shot_cut_ends_the_old_tracks_and_the_new_face_is_found_within_2_frames(
    carphone_frames: list[np.ndarray], finder: str
) -> None:
    plain, texture = backgrounds()
    detect = Detect(DetectConfig(finder=finder), 48)
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


@pytest.mark.parametrize("finder", FINDERS)
def test_a_still_face_that_appears_is_found_within_the_finders_interval(
    carphone_frames: list[np.ndarray], finder: str
) -> None:
    """Nothing moves before or after: the face appears once and stays (a person who sat down)."""
    plain, _ = backgrounds()
    cfg = DetectConfig(finder=finder)
    interval = cfg.finder_interval_s if finder == "yunet" else cfg.scan_interval_s
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
        assert found is not None and found / FPS <= interval, (x, y, found)


def first_found(detect: Detect, frames: list[np.ndarray]) -> int | None:
    for seq, image in enumerate(frames):
        if detect(Frame("cam0", seq, seq / FPS, image)).boxes:
            return seq
    return None


def test_a_face_growing_past_min_size_between_two_yunet_runs_is_found_when_it_gets_there(
    carphone_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone walking towards the camera: YuNet sees the face at 36 px on the first frame, under
    ``min_size`` (40); from the second frame on it is 50 px. It is watched, so the cascade finds it
    on the next search (a track's re-detection interval: the third frame at 30 FPS), not on YuNet's
    next run 0.2 s later, as it is when YuNet's smaller faces are not watched."""
    plain, _ = backgrounds()
    (face,) = full_cascade(carphone_frames[30])
    frames = []
    for side in [36] + [50] * 9:  # the face grows about its centre, kept at (320, 180)
        k = side / face.w
        small = cv2.resize(carphone_frames[30], None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
        x, y = round(320 - (face.x + face.w / 2) * k), round(180 - (face.y + face.h / 2) * k)
        frames.append(scene(small, plain, x, y))
    assert not full_cascade(frames[0]) and len(full_cascade(frames[1])) == 1  # under min_size, then over it
    cfg = DetectConfig()
    assert first_found(Detect(cfg, 48), frames) == 2
    monkeypatch.setattr(finder_mod, "WATCH", 1.0)  # only faces of min_size and more are kept
    assert first_found(Detect(cfg, 48), frames) == round(cfg.finder_interval_s * FPS)


def test_yunet_is_not_run_where_no_face_of_min_size_fits_in_the_frame(
    carphone_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """carphone is 176x144: a 200 px face cannot be in it, and YuNet on the 17x14 input that
    min_size would ask for gave NaN boxes in CI. The finder does not run; nothing is found."""
    calls: list[np.ndarray] = []

    def find(self: object, image: np.ndarray) -> list[object]:
        calls.append(image)
        return []

    monkeypatch.setattr(finder_mod.YuNetDetector, "find", find)
    detect = Detect(DetectConfig(min_size=200, scan_tile=401), 48)
    assert all(detect(Frame("cam0", i, i / FPS, f)).boxes == () for i, f in enumerate(carphone_frames[:10]))
    assert calls == []
    detect = Detect(DetectConfig(), 48)  # 40 px fits: YuNet looks, on the first frame at once
    detect(Frame("cam0", 0, 0.0, carphone_frames[0]))
    assert len(calls) == 1


def redetection_frames(frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The frames on which the track of ``frames``' face was re-detected (tried around)."""
    tried: list[int] = []
    around = schedule.CameraDetector._redetect_tracks

    def spy(self: schedule.CameraDetector, copy: Shrunk, ts: float, tracks: list[tuple[Track, Rect]]) -> list[Box]:
        found = around(self, copy, ts, tracks)
        tried.extend(round(ts * FPS) for track, _ in tracks if track.tried == ts)
        return found

    with monkeypatch.context() as patch:
        patch.setattr(schedule.CameraDetector, "_redetect_tracks", spy)
        detect = Detect(DetectConfig(), 48)
        for seq, image in enumerate(frames):
            detect(Frame("cam0", seq, seq / FPS, image))
    return tried


def test_a_track_found_at_each_try_is_tried_less_often_and_one_missed_at_the_configured_pace(
    carphone_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A face that stays for 1 s, then leaves: while the cascade finds it, its track is re-detected
    every 0.09 s (track_redetect_s 0.06 x STEADY_SLOWDOWN 1.5: every third frame at 30 FPS); once
    it is missed, every 0.06 s (every second frame) until the track is given up."""
    plain, _ = backgrounds()
    face = scene(carphone_frames[30], plain, 300, 100)
    frames = [face] * 30 + [plain] * 10
    tried = redetection_frames(frames, monkeypatch)
    gaps = [b - a for a, b in itertools.pairwise(tried)]
    staying = [g for a, g in zip(tried, gaps, strict=False) if a < 30]
    leaving = [g for a, g in zip(tried, gaps, strict=False) if a >= 30]
    assert len(staying) >= 8 and set(staying) == {3}, tried
    assert leaving and set(leaving) == {2}, tried
    monkeypatch.setattr(schedule, "STEADY_SLOWDOWN", 1.0)  # every track at track_redetect_s
    assert {b - a for a, b in itertools.pairwise(redetection_frames(frames, monkeypatch))} == {2}
