"""Worker pools on a running pipeline: a worker started by hand joins, a SIGKILLed one loses nothing."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

from emopipe.metrics import WORKER_PORT_STEP
from helpers import free_port, launch, pipeline_toml, reap, scrape_value, stage_pids, start_stage, stop, wait_for


def processed(port: int, camera: str = "cam0", stage: str = "classify") -> float:
    """Frames the worker on ``port`` processed; -1 while it serves no metrics yet, 0 before its
    first frame of the camera (a worker that knows no sources has no series for it until then)."""
    try:
        return scrape_value(port, f'emopipe_frames_processed_total{{camera="{camera}",stage="{stage}"}}')
    except OSError:
        return -1.0
    except AssertionError:  # no such sample yet
        return 0.0


def lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_a_classify_worker_started_by_hand_joins_a_running_pipeline_and_takes_work_within_2_s(
    ipc_dir: Path, carphone: Path, model_path: Path
) -> None:
    port = free_port()
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [], classify={"model": model_path, "metrics_port": port}))
    log = ipc_dir / "run.log"
    proc = launch(config, log, "--source", f"cam0={carphone}", "--loop", "--realtime")
    hand = None
    try:
        assert wait_for(lambda: processed(port) > 0, 60), log.read_text()
        hand_log = ipc_dir / "hand.log"
        hand = start_stage("classify", config, hand_log)
        assert wait_for(lambda: "a worker of" in hand_log.read_text(), 60), hand_log.read_text()
        joined = time.monotonic()
        second = port + WORKER_PORT_STEP  # the first worker has the configured port
        assert f"metrics on http://127.0.0.1:{second}/metrics" in hand_log.read_text()
        assert wait_for(lambda: processed(second) > 0, 5), hand_log.read_text()
        took = time.monotonic() - joined
        assert took < 2.0, f"the new worker took work after {took:.1f} s"
        before = processed(port), processed(second)
        time.sleep(2)
        after = processed(port), processed(second)
        assert after[0] > before[0] and after[1] > before[1]  # both share the camera's faces
    finally:
        if hand is not None:
            assert stop(hand) == 0
        stop(proc)
        reap(proc, log)


def test_sigkilled_workers_lose_no_line_in_lossless_mode(ipc_dir: Path, carphone: Path, model_path: Path) -> None:
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [], classify={"model": model_path}))
    log, events = ipc_dir / "run.log", ipc_dir / "out.jsonl"
    sources = ["--source", f"a={carphone}", "--source", f"b={carphone}"]
    proc = launch(config, log, *sources, "--workers", "detect=2", "--workers", "classify=2", "--events", str(events))
    try:
        assert wait_for(lambda: len(lines(events)) >= 40, 60), log.read_text()
        pids = stage_pids(log)
        for name in ("detect", "classify#2"):
            os.kill(pids[name], signal.SIGKILL)
        assert proc.wait(120) == 0, log.read_text()
    finally:
        reap(proc, log)
    text = log.read_text()
    assert "pool detect: worker" in text and "pool classify: worker" in text  # both losses were noticed
    written = Counter((line["camera"], line["frame"]) for line in lines(events))
    assert set(written.values()) == {1}, [k for k, v in written.items() if v != 1]
    assert sorted(written) == [(c, f) for c in ("a", "b") for f in range(120)]
    for camera in ("a", "b"):
        frames = [line["frame"] for line in lines(events) if line["camera"] == camera]
        assert frames == list(range(120))  # in frame order, though two workers answered them


def test_live_results_resume_within_2_s_after_a_detect_worker_is_sigkilled(
    ipc_dir: Path, carphone: Path, model_path: Path
) -> None:
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [], classify={"model": model_path}))
    log, events = ipc_dir / "run.log", ipc_dir / "out.jsonl"
    sources = ["--source", f"a={carphone}", "--source", f"b={carphone}", "--loop", "--realtime"]
    proc = launch(config, log, *sources, "--workers", "detect=2", "--events", str(events))
    try:
        assert wait_for(lambda: len(lines(events)) >= 60, 60), log.read_text()
        arrivals: dict[str, list[float]] = {"a": [], "b": []}
        seen = 0
        killed = 0.0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            now = time.monotonic()
            got = lines(events)
            for line in got[seen:]:
                arrivals[str(line["camera"])].append(now)
            seen = len(got)
            if not killed and now > deadline - 6:
                os.kill(stage_pids(log)["detect"], signal.SIGKILL)  # it holds one of the two cameras
                killed = now
            time.sleep(0.05)
    finally:
        reap(proc, log)
    for camera, times in arrivals.items():
        after = [t for t in times if t > killed]
        assert after and after[-1] > deadline - 1, f"camera {camera}: no results at the end"
        gaps = [b - a for a, b in zip([killed, *after], after, strict=False)]
        assert max(gaps) < 2.0, f"camera {camera}: {max(gaps):.2f} s without a result after the kill"
