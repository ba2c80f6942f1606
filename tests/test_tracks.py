"""Face tracks (detect), the rolling scan's plan, and per-track smoothing (sink), on boxes with known motion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emopipe.messages import Box, FaceResult, Results
from services.detect.schedule import plan_scan, same_faces_merged, tiles
from services.detect.tracker import Tracker
from services.sink.smoothing import Smoother

FPS = 30.0
W, H = 640, 480
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def ids_by_x(tracker: Tracker, ts: float, boxes: list[Box]) -> dict[int, int]:
    """Run one frame; the track id of each reported face, keyed by the box's x."""
    return {f.box.x: f.track for f in tracker.update(ts, boxes, W, H)}


def test_a_face_keeps_its_id_through_missed_detections_and_coasts_on_its_motion() -> None:
    tracker = Tracker(hold_s=0.3, timeout_s=1.0)
    ids = set()
    for i in range(30):
        ts = i / FPS
        x = 100 + 4 * i  # 120 px/s to the right
        seen = [] if i in (10, 11, 12) else [Box(x, 100, 80, 80)]
        faces = tracker.update(ts, seen, W, H)
        assert len(faces) == 1, f"frame {i}"
        ids.add(faces[0].track)
        if i == 11:  # coasted: the box moved on with the face's velocity
            assert not faces[0].detected and abs(faces[0].box.x - x) <= 2
    assert ids == {1}


def test_two_faces_crossing_do_not_swap_ids() -> None:
    tracker = Tracker()
    first = ids_by_x(tracker, 0.0, [Box(100, 100, 80, 80), Box(400, 110, 80, 80)])
    left, right = first[100], first[400]
    assert left != right
    for i in range(1, 45):
        ts = i / FPS
        a, b = 100 + 7 * i, 400 - 7 * i  # they meet near x = 250 at frame 21 and pass
        got = ids_by_x(tracker, ts, [Box(a, 100, 80, 80), Box(b, 110, 80, 80)])
        if a != b:
            assert got[a] == left and got[b] == right, f"frame {i}: {got}"


def test_a_track_ends_after_the_configured_time_unseen_and_a_new_face_gets_a_new_id() -> None:
    tracker = Tracker(hold_s=0.2, timeout_s=0.5)
    assert [f.track for f in tracker.update(0.0, [Box(10, 10, 50, 50)], W, H)] == [1]
    assert [f.track for f in tracker.update(0.1, [], W, H)] == [1]  # within the hold: still reported
    assert tracker.update(0.4, [], W, H) == []  # past the hold: not drawn, but alive
    assert [t.id for t in tracker.tracks] == [1]
    assert [f.track for f in tracker.update(0.45, [Box(12, 10, 50, 50)], W, H)] == [1]  # found again
    assert tracker.update(1.0, [], W, H) == [] and tracker.tracks == []  # 0.55 s unseen: ended
    assert [f.track for f in tracker.update(1.1, [Box(12, 10, 50, 50)], W, H)] == [2]


def test_a_face_that_turns_away_mid_motion_is_looked_for_where_it_was_heading_and_keeps_its_id() -> None:
    tracker = Tracker(hold_s=0.3, timeout_s=2.0)
    for i in range(10):  # 300 px/s to the right, then gone for 1.5 s
        assert [f.track for f in tracker.update(i / FPS, [Box(100 + 10 * i, 100, 80, 80)], W, H)] == [1]
    last = 9 / FPS
    ((_, predicted),) = tracker.predicted(last + 1.5)
    assert predicted[0] == pytest.approx(190 + 300 * 0.3, abs=1)  # carried on for the hold, not for 1.5 s
    assert tracker.update(last + 1.5, [Box(285, 100, 80, 80)], W, H)[0].track == 1  # back near there: same face


def test_the_scan_plan_covers_every_face_size_and_position_once_per_cycle() -> None:
    jobs = plan_scan(W, H, min_size=40, tile=240)
    bands = sorted({(j.min_size, j.max_size, j.shrink) for j in jobs})
    assert bands == [(40, 80, 1.0), (80, 160, 2.0), (160, 320, 4.0), (320, 0, 8.0)]
    for x, y, size in [(0, 0, 40), (630 - 45, 440 - 45, 45), (300, 200, 79), (170, 90, 150), (0, 0, 470)]:
        fits = [
            j
            for j in jobs
            if j.min_size <= size
            and (j.max_size == 0 or size < j.max_size)
            and j.region.x <= x
            and j.region.y <= y
            and x + size <= j.region.x + j.region.w
            and y + size <= j.region.y + j.region.h
        ]
        assert fits, f"a {size}-pixel face at {x},{y} falls in no job"
    assert jobs[0].max_size == 0 and jobs[-1].shrink == 1.0  # cheapest (largest faces) first


def test_tiles_overlap_by_the_requested_amount_and_reach_the_edges() -> None:
    got = tiles(640, 480, 240, 80)
    xs = sorted({t.x for t in got})
    assert xs[0] == 0 and xs[-1] + 240 == 640
    assert all(b - a <= 240 - 80 for a, b in zip(xs, xs[1:], strict=False))
    assert tiles(100, 80, 240, 80) == [Box(0, 0, 100, 80)]


def test_overlapping_detections_of_one_face_are_merged_keeping_the_first() -> None:
    boxes = [Box(100, 100, 80, 80), Box(104, 102, 84, 84), Box(300, 100, 80, 80)]
    assert same_faces_merged(boxes) == [Box(100, 100, 80, 80), Box(300, 100, 80, 80)]


def results_at(ts: float, probs: list[float], track: int = 1) -> Results:
    best = int(np.argmax(probs))
    face = FaceResult(Box(0, 0, 10, 10), LABELS[best], probs[best], tuple(probs), track=track)
    return Results("cam0", int(ts * 100), ts, (face,), LABELS)


def test_smoothing_follows_a_step_with_the_configured_time_constant() -> None:
    """After a switch from 'sad' to 'happy', the average has moved 1 - e^-t/tau of the way."""
    tau = 0.5
    smoother = Smoother(tau_s=tau, timeout_s=5.0)
    sad = [0.0, 0, 0, 0, 1.0, 0, 0]
    happy = [0.0, 0, 0, 1.0, 0, 0, 0]
    smoother.update(results_at(0.0, sad))
    t = 0.0
    labels = []
    for i in range(1, 31):  # 30 FPS for one second
        t = i / FPS
        labels.append(smoother.update(results_at(t, happy))[0].emotion)
    state = smoother.tracks[("cam0", 1)]
    assert state.average[3] == pytest.approx(1 - math.exp(-t / tau), abs=1e-9)
    switch = labels.index("happy") + 1  # first frame where happy outweighs sad: 1 - e^-t/tau > 0.5
    assert switch / FPS == pytest.approx(tau * math.log(2), abs=1 / FPS)


def test_smoothing_does_not_depend_on_the_frame_rate() -> None:
    """The same second seen at 30 FPS or at 5 FPS (dropped frames) gives the same average."""
    averages = []
    for fps in (30.0, 5.0):
        smoother = Smoother(tau_s=1.0, timeout_s=5.0)
        smoother.update(results_at(0.0, [0.0, 0, 0, 0, 1.0, 0, 0]))
        for i in range(1, int(fps) + 1):
            smoother.update(results_at(i / fps, [0.0, 0, 0, 1.0, 0, 0, 0]))
        averages.append(smoother.tracks[("cam0", 1)].average)
    np.testing.assert_allclose(averages[0], averages[1], atol=1e-9)


def test_each_track_is_smoothed_on_its_own_and_ends_with_its_emotion_shares() -> None:
    smoother = Smoother(tau_s=0.0001, timeout_s=1.0)  # next to no smoothing: the shares are the raw labels
    for i in range(10):
        smoother.update(results_at(i / FPS, [0.0, 0, 0, 1.0, 0, 0, 0] if i < 7 else [0.0, 0, 0, 0, 1.0, 0, 0], 1))
        smoother.update(results_at(i / FPS, [0.0, 0, 0, 0, 0, 0, 1.0], 2))
    assert smoother.ended("cam0", 9 / FPS + 0.5) == []  # not yet a second unseen
    ended = smoother.ended("cam0", 9 / FPS + 1.5)
    summaries = [s.summary(LABELS) for s in ended]
    assert [s["track"] for s in summaries] == [1, 2]
    assert summaries[0]["emotions"]["happy"] == 0.7 and summaries[0]["emotions"]["sad"] == 0.3
    assert summaries[1]["emotions"]["neutral"] == 1.0 and summaries[1]["frames"] == 10
    assert summaries[0]["probabilities"]["happy"] == pytest.approx(0.7) and summaries[0]["probabilities"]["sad"] == 0.3
    assert summaries[1]["probabilities"]["neutral"] == 1.0 and summaries[1]["probabilities"]["happy"] == 0.0
    assert summaries[0]["seconds"] == pytest.approx(9 / FPS, abs=1e-3)
    assert smoother.tracks == {}


def test_the_viewer_board_reports_fps_latency_faces_and_a_minute_of_emotion_mix() -> None:
    from services.sink.smoothing import Smoothed
    from services.sink.stats import MIX_SECONDS, Board

    board = Board()
    now = 1000.0
    for i in range(90):  # 3 s at 30 FPS, each line written 40 ms after capture
        t = now - 3 + i / 30
        res = results_at(t - 0.04, [0.0, 0, 0, 1.0, 0, 0, 0], track=5)
        board.record(res, [Smoothed("happy" if i < 60 else "sad", 0.8, tuple(res.faces[0].probabilities))], now=t)
    snap = board.snapshot(now=now)
    cam = snap["cameras"]["cam0"]
    assert snap["labels"] == list(LABELS)
    assert cam["fps"] == pytest.approx(30.0, abs=0.5) and cam["latency_ms"] == 40
    assert cam["faces"] == [{"track": 5, "emotion": "sad", "confidence": 0.8, "probabilities": [0, 0, 0, 1.0, 0, 0, 0]}]
    assert len(cam["mix"]) == MIX_SECONDS and cam["mix"][:-4] == [{}] * (MIX_SECONDS - 4)
    assert sum(m.get("happy", 0) for m in cam["mix"]) == 60 and sum(m.get("sad", 0) for m in cam["mix"]) == 30
    assert board.snapshot(now=now + 10)["cameras"]["cam0"]["fps"] == 0.0  # nothing written for 10 s
