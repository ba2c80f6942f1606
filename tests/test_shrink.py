"""Large frames (1280x720, 1920x1080) are searched for faces on a shrunk copy (``detect.max_side``):
boxes, ``min_size`` and crops stay in full-frame pixels, and the default path at 640x480 is untouched."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from deploy.measure import cover
from emopipe import config as config_mod
from emopipe.config import DetectConfig
from emopipe.messages import Box, Faces, Frame
from services.detect.main import Detect
from services.detect.schedule import BAND_FACE, plan_scan
from services.detect.shrink import Shrunk, copy_size, shrunk, shrunk_grey
from services.detect.yunet import YuNetDetector

FPS = 30.0
FACE = 48  # crop side
FACE_AT_640 = 200  # the face's side in the video scaled to 640x480 (the full-frame cascade's box)


def iou(a: Box, b: Box) -> float:
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / float(a.w * a.h + b.w * b.h - inter)


def doubled(box: Box) -> Box:
    return Box(2 * box.x, 2 * box.y, 2 * box.w, 2 * box.h)


def largest(faces: Faces) -> tuple[Box, int]:
    """The person's face and its track (the cascade also takes a patch of the background for a
    small face on a few frames, at every size, the full-frame cascade too)."""
    return max(zip(faces.boxes, faces.tracks, strict=True), key=lambda bt: bt[0].w)


@pytest.fixture(scope="module")
def wide_frames(carphone_frames: list[np.ndarray]) -> list[np.ndarray]:
    """Twenty 640x360 frames of the real face video (scaled to cover, centre-cropped)."""
    return [cover(f, (640, 360)) for f in carphone_frames[:20]]


def run(detect: Detect, frames: list[np.ndarray]) -> list[Faces]:
    return [detect(Frame("cam0", seq, seq / FPS, image)) for seq, image in enumerate(frames)]


def test_copy_sizes_keep_the_aspect_and_leave_frames_up_to_max_side_alone() -> None:
    assert copy_size(640, 480, 640) == (640, 480)  # the default path at 640x480: the frame itself
    assert copy_size(1280, 720, 640) == (640, 360)
    assert copy_size(1920, 1080, 640) == (640, 360)
    assert copy_size(720, 1280, 640) == (360, 640)  # a portrait camera: its longer side
    assert copy_size(1920, 1080, 0) == (1920, 1080)  # 0: never shrunk
    copy = Shrunk(np.zeros((360, 640), np.uint8), (1920, 1080), np.zeros((1080, 1920, 3), np.uint8))
    assert copy.scale == (3.0, 3.0)
    assert copy.to_frame(Box(10, 20, 30, 30)) == Box(30, 60, 90, 90)
    assert copy.face_size(40) == 14  # 40 frame pixels are 13.3 of the copy: rounded up, never under 40 back


def test_a_1280x720_frame_gives_the_640x360_boxes_doubled_and_crops_cut_at_full_resolution(
    wide_frames: list[np.ndarray],
) -> None:
    small = run(Detect(DetectConfig(), FACE), wide_frames[:10])
    big_frames = [cv2.resize(f, (1280, 720), interpolation=cv2.INTER_LINEAR) for f in wide_frames[:10]]
    big = run(Detect(DetectConfig(), FACE), big_frames)
    assert all(f.boxes for f in small) and all(f.boxes for f in big)
    for frame, want, got in zip(big_frames, small, big, strict=True):
        box, wanted = largest(got)[0], largest(want)[0]
        assert iou(box, doubled(wanted)) > 0.85, (box, wanted)
        # frame pixels, not the copy's (within one of the cascade's 1.1 steps: each size searched around
        # YuNet's box, whose size differs a little between the two inputs)
        assert abs(box.w / (2 * wanted.w) - 1) < 0.1
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        for crop, b in zip(got.crops, got.boxes, strict=True):
            cut = cv2.resize(grey[b.y : b.y + b.h, b.x : b.x + b.w], (FACE, FACE), interpolation=cv2.INTER_AREA)
            assert np.array_equal(crop, cut)  # from the 1280x720 frame, not the 640x360 copy


def test_at_640x480_and_below_detection_runs_on_the_frame_itself(carphone_frames: list[np.ndarray]) -> None:
    """The default path is unchanged: the copy is the frame's own grey, not a resized one."""
    image = cover(carphone_frames[0], (640, 480))
    copy = shrunk_grey(image, DetectConfig().max_side)
    assert copy.scale == (1.0, 1.0)
    assert np.array_equal(copy.gray, cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))


def test_min_size_counts_full_frame_pixels_on_a_shrunk_frame(wide_frames: list[np.ndarray]) -> None:
    """The face is about 2w pixels wide at 1280x720 and w on the 640x360 copy: a min_size of 1.5w
    keeps it (it would not if min_size counted pixels of the copy), 2.5w drops it."""
    width = run(Detect(DetectConfig(), FACE), wide_frames[:1])[0].boxes[0].w
    big_frames = [cv2.resize(f, (1280, 720), interpolation=cv2.INTER_LINEAR) for f in wide_frames[:10]]
    for min_size, found in ((round(1.5 * width), True), (round(2.5 * width), False)):
        cfg = DetectConfig(min_size=min_size, scan_tile=2 * min_size + 1)  # the tile config validation asks for
        faces = run(Detect(cfg, FACE), big_frames)
        assert all(bool(f.boxes) == found for f in faces), (min_size, [f.boxes for f in faces])
        assert all(b.w >= min_size for f in faces for b in f.boxes)


def small_face_frames(frames: list[np.ndarray], side: int) -> list[np.ndarray]:
    """The real face video shrunk so its face is about ``side`` px, placed in a grey 1280x720 frame."""
    out = []
    for image in frames:
        size = (round(640 * side / FACE_AT_640), round(480 * side / FACE_AT_640))
        tile = cv2.resize(cover(image, (640, 480)), size, interpolation=cv2.INTER_AREA)
        canvas = np.full((720, 1280, 3), 128, np.uint8)
        canvas[300 : 300 + tile.shape[0], 500 : 500 + tile.shape[1]] = tile
        out.append(canvas)
    return out


def test_a_face_at_the_copys_window_is_confirmed_on_the_frame_itself(carphone_frames: list[np.ndarray]) -> None:
    """At 1280x720 the 640x360 copy shows a 48-51 px face at 24-25 px, the cascade's 24 px window:
    there it was found on 0 of these 30 frames. YuNet proposes it and the cascade confirms it on
    the frame's own pixels, where the full-frame cascade finds it, and it is tracked in frame pixels."""
    frames = small_face_frames(carphone_frames[:30], 44)
    reference = Detect(DetectConfig(every_frame=True), FACE)
    wanted = [reference(Frame("cam0", seq, seq / FPS, image)).boxes for seq, image in enumerate(frames)]
    assert sum(len(boxes) == 1 for boxes in wanted) >= 28
    assert all(b.w <= 52 for boxes in wanted for b in boxes)
    faces = run(Detect(DetectConfig(), FACE), frames)
    assert sum(len(f.boxes) == 1 for f in faces) >= 28, [f.boxes for f in faces]
    for want, got in zip(wanted, faces, strict=True):
        if want and got.boxes:
            assert iou(got.boxes[0], want[0]) > 0.6, (got.boxes, want)
    assert len({t for f in faces for t in f.tracks}) == 1  # one track throughout


def test_a_new_frame_size_ends_the_tracks_even_when_the_copy_keeps_its_size(wide_frames: list[np.ndarray]) -> None:
    """1280x720 and 1920x1080 both make a 640x360 copy: the change is still a new picture (the face
    is found again by the scan, in 1920x1080 pixels, within large_scan_interval_s)."""
    detect = Detect(DetectConfig(), FACE)
    hd = [cv2.resize(f, (1280, 720), interpolation=cv2.INTER_LINEAR) for f in wide_frames[:5]]
    box, track = largest(run(detect, hd)[-1])
    full_hd = [cv2.resize(f, (1920, 1080), interpolation=cv2.INTER_LINEAR) for f in wide_frames[5:]]
    after = [detect(Frame("cam0", seq, seq / FPS, image)) for seq, image in enumerate(full_hd, start=5)]
    assert all(track not in f.tracks for f in after)
    assert after[-1].boxes and largest(after[-1])[0].w > 1.3 * box.w  # in 1920x1080 pixels


def test_each_scan_band_of_a_copy_looks_at_its_smallest_faces_at_band_face_pixels_or_at_full_resolution() -> None:
    """A 640x360 copy whose smallest face is the cascade's 24 px window: a band shrunk by 2**k would
    show a 200 px face as 25 px on an 80x45 picture, where the cascade does not find it."""
    jobs = plan_scan(640, 360, 24, 144)
    assert all(j.shrink == 1.0 or j.min_size / j.shrink >= BAND_FACE for j in jobs)
    bands = sorted({(j.min_size, j.max_size, j.shrink) for j in jobs})
    assert bands == [(24, 48, 1.0), (48, 96, 1.0), (96, 192, 2.0), (192, 0, 4.0)]
    assert {j.region.w for j in jobs if j.min_size == 24} == {144}  # band 0's tile; twice as wide per band up
    default = sorted({(j.min_size, j.shrink, j.region.w) for j in plan_scan(640, 480, 40, 240)})
    assert default == [(40, 1.0, 240), (80, 2.0, 480), (160, 4.0, 640), (320, 8.0, 640)]  # 640x480: unchanged


@pytest.mark.parametrize("value", [-1, 10, 47])
def test_a_bad_max_side_is_refused_with_the_key_named(tmp_path: Path, value: int) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[detect]\nmax_side = {value}\n")
    with pytest.raises(config_mod.ConfigError, match=r"detect\.max_side"):
        config_mod.load(path)
    path.write_text("[detect]\nmax_side = 0\n")
    assert config_mod.load(path).detect.max_side == 0  # 0: always the whole frame


def test_yunets_input_is_halved_by_area_then_resized_linearly_and_finds_the_same_face(
    carphone_frames: list[np.ndarray],
) -> None:
    """``shrink.shrunk``: a frame twice the size gets OpenCV's one area resize (the same pixels);
    a 1280x720 frame for a 427x240 input is halved, then resized linearly: within a few grey
    levels of the one-step area resize, and YuNet finds the face where it does on that."""
    frame = cover(carphone_frames[30], (640, 480))
    np.testing.assert_array_equal(
        shrunk(frame, (320, 240)), cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA)
    )
    hd = cover(carphone_frames[30], (1280, 720))
    fast, area = shrunk(hd, (427, 240)), cv2.resize(hd, (427, 240), interpolation=cv2.INTER_AREA)
    assert fast.shape == area.shape == (240, 427, 3)
    assert float(np.mean(cv2.absdiff(fast, area))) < 3.0
    net = YuNetDetector(40, 0.6, shrink=3.0)
    faces = net.find(hd)
    assert len(faces) == 1 and faces[0].box.w > 150  # the man's face, about 180 px at 1280x720
    rows = net.net.detect(area)
    assert rows is not None and len(rows) == 1
    one_step = Box(*(round(float(v) * 1280 / 427) for v in rows[0][:4]))
    assert iou(Box(*(round(v) for v in faces[0].raw)), one_step) > 0.85
