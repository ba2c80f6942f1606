"""Files analysed frame by frame: media time, repeatable lines, and damaged files (issue 39's
"nothing lost, nothing hidden"; issue 35's media time). Real H.264 files made with ffmpeg
(imageio-ffmpeg's binary), the real pipeline."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import run_source

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

FRAMES = 216
FPS = 30
RUN_TIMEOUT_S = 120
EXIT_SOURCE_INCOMPLETE = 4


@pytest.fixture(scope="module")
def h264(tmp_path_factory: pytest.TempPathFactory, carphone: Path) -> Path:
    """216 frames of the carphone video (played twice) at 640x480 as a fast-start H.264 mp4 with a
    key frame a second (what a phone writes)."""
    out = tmp_path_factory.mktemp("h264") / "clip.mp4"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-stream_loop", "1", "-i", str(carphone)]
        + ["-vf", "scale=640:480", "-r", str(FPS), "-frames:v", str(FRAMES), "-c:v", "libx264", "-g", str(FPS)]
        + ["-pix_fmt", "yuv420p"]
        + ["-movflags", "+faststart", str(out)],
        check=True,
    )
    return out


def damaged(good: Path, out: Path, noise: bool) -> Path:
    """The file with 20 KB of noise in the middle, or cut in half."""
    data = good.read_bytes()
    middle = len(data) // 2
    if noise:
        junk = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
        out.write_bytes(data[:middle] + junk + data[middle + len(junk) :])
    else:
        out.write_bytes(data[:middle])
    return out


def run(source: Path, tmp: Path, model_path: Path, name: str) -> dict[str, Any]:
    return run_source(tmp, model_path, source, name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, h264: Path, model_path: Path) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("runs")
    yield {
        "first": run(h264, tmp, model_path, "first"),
        "second": run(h264, tmp, model_path, "second"),
        "noise": run(damaged(h264, tmp / "noise.mp4", noise=True), tmp, model_path, "noise"),
        "half": run(damaged(h264, tmp / "half.mp4", noise=False), tmp, model_path, "half"),
    }


def test_two_lossless_runs_of_a_file_write_identical_lines(runs: dict[str, Any]) -> None:
    first, second = runs["first"], runs["second"]
    assert first["code"] == 0 and second["code"] == 0
    assert len(first["lines"]) == FRAMES
    assert sum(len(line["faces"]) for line in first["lines"]) > FRAMES // 2  # the clip has a face
    assert first["text"] == second["text"]


def test_a_file_frames_carry_their_media_time(runs: dict[str, Any]) -> None:
    times = [line["ts"] for line in runs["first"]["lines"]]
    assert times[0] == 0.0
    assert times == pytest.approx([i / FPS for i in range(FRAMES)], abs=0.002)
    assert re.search(r"\d+\.\dx real time", runs["first"]["log"]), "the summary gives the speed against real time"


def test_a_damaged_stretch_is_skipped_counted_and_named_and_the_run_says_incomplete(runs: dict[str, Any]) -> None:
    noise = runs["noise"]
    assert noise["code"] == EXIT_SOURCE_INCOMPLETE
    pattern = r"(\d+) frame\(s\) of the file could not be decoded, between ([\d.]+) s and ([\d.]+) s"
    skipped = re.findall(pattern, noise["log"])
    assert skipped, noise["log"][-2000:]
    unread = sum(int(count) for count, _, _ in skipped)
    read = FRAMES - unread
    # OpenCV alone stopped at the damage (104 frames): the frames after it are read too
    assert 0 < unread < 40 and float(skipped[0][1]) > 2.0
    frames = [line["frame"] for line in noise["lines"]]
    assert frames == list(range(read)), "every frame read has its line, in order"
    times = [line["ts"] for line in noise["lines"]]
    missing = sum(round((later - earlier) * FPS) - 1 for earlier, later in zip(times[:-1], times[1:], strict=True))
    assert missing == unread, "the frames skipped are the gaps in media time"
    assert f"cam0: {read} of {FRAMES} frames" in noise["log"]
    assert "incomplete source" in noise["log"]


def test_a_file_cut_short_reports_n_of_m_frames_and_the_documented_status(runs: dict[str, Any]) -> None:
    half = runs["half"]
    assert half["code"] == EXIT_SOURCE_INCOMPLETE
    read = len(half["lines"])
    assert 60 < read < FRAMES - 60
    assert [line["frame"] for line in half["lines"]] == list(range(read))
    assert f"of the {FRAMES} frames it declares" in half["log"]
    assert f"cam0: {read} of {FRAMES} frames" in half["log"]
