"""Soak (opt-in: ``./test -m soak``): the live pipeline on a looped video for EMOPIPE_SOAK_S
seconds (600), sampling every stage's RSS and open file descriptors; after a warm-up, both
stay flat (a bounded slope), and the figures are printed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from helpers import launch, pipeline_toml, reap, stage_pids

SECONDS = float(os.environ.get("EMOPIPE_SOAK_S", "600"))
EVERY_S = 10.0
WARM_UP_S = 60.0
#: RSS may grow by at most this per hour after warm-up (a leak of 1 KB a frame at 30 FPS is 100 MB/h)
MAX_RSS_MB_PER_HOUR = 20.0


@pytest.mark.soak
@pytest.mark.timeout(SECONDS + 300)
def test_a_live_run_keeps_memory_and_file_descriptors_flat(ipc_dir: Path, carphone: Path, model_path: Path) -> None:
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [], classify={"model": model_path}))
    log, events = ipc_dir / "run.log", ipc_dir / "events.jsonl"
    proc = launch(config, log, "--source", f"cam0={carphone}", "--loop", "--realtime", "--events", str(events))
    samples: dict[str, list[tuple[float, float, int]]] = {}
    try:
        time.sleep(5)
        pids = stage_pids(log)
        processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        processes["launcher"] = psutil.Process(proc.pid)
        start = time.monotonic()
        while time.monotonic() - start < SECONDS:
            for name, process in processes.items():
                rss = process.memory_info().rss / 2**20
                samples.setdefault(name, []).append((time.monotonic() - start, rss, process.num_fds()))
            time.sleep(EVERY_S)
        assert stage_pids(log) == pids and proc.poll() is None, "a stage died or was restarted during the soak"
    finally:
        proc.terminate()
        proc.wait(30)
        reap(proc, log)
    lines = events.read_bytes().count(b"\n")
    print(f"\nsoak: {SECONDS:.0f} s, {lines} lines ({lines / SECONDS:.1f} per second)")
    for name, rows in samples.items():
        t, rss, fds = (np.array(col, dtype=float) for col in zip(*rows, strict=True))
        steady = t >= WARM_UP_S
        slope = float(np.polyfit(t[steady], rss[steady], 1)[0]) * 3600
        print(
            f"  {name:8s} RSS {rss[0]:.0f} -> {rss[steady][0]:.0f} (after warm-up) -> {rss[-1]:.0f} MB, "
            f"slope {slope:+.1f} MB/h; fds {int(fds.min())}..{int(fds.max())}"
        )
        assert slope < MAX_RSS_MB_PER_HOUR, f"{name}: RSS grows {slope:.1f} MB/h"
        assert fds[steady].max() - fds[steady].min() <= 4, f"{name}: open files {fds[steady]}"
    assert lines > 10 * SECONDS  # it ran live all along
