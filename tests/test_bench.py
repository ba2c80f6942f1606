"""`emopipe bench --smoke`: the whole benchmark runs in a few seconds on 2 cameras and reports real figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from deploy.bench import unsearched
from emopipe import config as config_mod


def smoke_bench(markdown: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``emopipe bench --smoke`` with ``options``, its table also written to ``markdown``."""
    command = [sys.executable, "-m", "deploy.launcher", "bench", "--smoke", "--markdown", str(markdown), *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_bench_smoke_reports_fps_latency_usage_recall_and_flicker_for_two_cameras(tmp_path: Path) -> None:
    markdown = tmp_path / "bench.md"
    site = tmp_path / "site.toml"
    site.write_text("[sink]\nsmooth_s = 1.0\n")
    proc = smoke_bench(markdown, "--config", str(site))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = markdown.read_text()
    assert text == proc.stdout.rstrip("\n") + "\n" or text in proc.stdout
    assert f"--config {site}" in text and f"config {site}; workers" in text  # the report names what it measured
    cameras = re.findall(r"^\| (cam\d) \| ([0-9.]+) \| (\d+) \| (\d+) \| (\d+) \|$", text, re.M)
    assert [c[0] for c in cameras] == ["cam0", "cam1"]
    for _, fps, p50, p95, p99 in cameras:
        assert float(fps) > 1.0  # each camera got results through the whole pipeline
        assert 0 < int(p50) <= int(p95) <= int(p99) < 10_000
    stages = re.findall(r"^\| (capture|detect|classify|sink) \| (\d+) \| (\d+) \| (\d+) \|$", text, re.M)
    assert sorted(s[0] for s in stages) == ["capture", "classify", "detect", "sink"]
    assert all(int(rss) > 10 for *_, rss in stages)
    paper = re.search(r"single-process loop: ([0-9.]+) FPS \(([0-9.]+)x\)", text)
    assert paper and float(paper.group(1)) > 0
    recall = re.search(r"recall ([0-9.]+)% \((\d+)/(\d+) boxes", text)
    assert recall and int(recall.group(3)) > 0 and 0 <= float(recall.group(1)) <= 100
    assert int(recall.group(2)) <= int(recall.group(3))
    assert "detection looks at a" not in text  # 640x480 is searched whole
    flicker = re.search(r"Label flicker: ([0-9.]+) raw against ([0-9.]+) smoothed", text)
    assert flicker and float(flicker.group(2)) <= float(flicker.group(1))
    analysis = re.search(
        r"lossless, one camera\): (\d+) frames \(([0-9.]+) s of video\) in ([0-9.]+) s.*\*\*([0-9.]+)x real", text
    )
    assert analysis and int(analysis.group(1)) == 480  # the bench clip: every frame has its line
    media, wall, speed = (float(analysis.group(i)) for i in (2, 3, 4))
    assert media == 16.0 and abs(speed - media / wall) < 0.2


def test_bench_smoke_at_1280x720_runs_every_step_on_the_scaled_clip_and_says_so(tmp_path: Path) -> None:
    """``--size``: an HD camera's cost; the clip is scaled once (to cover, centre-cropped) and cached."""
    markdown = tmp_path / "bench.md"
    proc = smoke_bench(markdown, "--size", "1280x720")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = markdown.read_text()
    video = re.search(r"^- video: (\S+) \((\d+)x(\d+) frames", text, re.M)
    assert video and (video.group(2), video.group(3)) == ("1280", "720")
    assert Path(video.group(1)).name == "carphone-640x480-30fps-1280x720.mp4"
    assert "--size 1280x720" in text
    cameras = re.findall(r"^\| (cam\d) \| ([0-9.]+) \|", text, re.M)
    assert [c[0] for c in cameras] == ["cam0", "cam1"] and all(float(fps) > 1.0 for _, fps in cameras)
    recall = re.search(r"recall ([0-9.]+)% \((\d+)/(\d+) boxes", text)
    assert recall and int(recall.group(3)) > 0 and float(recall.group(1)) >= 80  # faces found at 1280x720
    confirmed = re.search(r"of the cascade's boxes YuNet confirms ([0-9.]+)% \((\d+)/(\d+)\)", text)
    assert confirmed and int(confirmed.group(2)) <= int(confirmed.group(3)) <= int(recall.group(3))
    assert "copy (`detect.max_side`" not in text  # the finder looks for faces down to min_size at HD too
    analysis = re.search(r"lossless, one camera\): (\d+) frames", text)
    assert analysis and int(analysis.group(1)) == 480  # every frame of the scaled clip has its line


def test_the_rolling_scan_says_at_hd_which_faces_it_does_not_look_for() -> None:
    """The rolling scan searches the 640x360 copy only (its 24 px window: 48 px at 1280x720); the finder
    confirms such faces on the frame itself, and 640x480 frames are searched whole."""
    scan = config_mod.from_dict({"detect": {"finder": "cascade"}})
    assert unsearched(1280, 720, scan) == (
        " At 1280x720 detection looks at a 640x360 copy (`detect.max_side` 640): the rolling scan does not look"
        " for faces under 48 px; the full-frame cascade looks down to 40 px."
    )
    assert "under 72 px" in unsearched(1920, 1080, scan)
    assert unsearched(640, 480, scan) == ""
    assert unsearched(1280, 720, config_mod.from_dict({})) == ""  # the finder (the default)
