"""A disk that fills up while JSON lines are written (``/dev/full``: every write fails with ENOSPC)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from emopipe import service
from helpers import REPO, free_port, launch, pipeline_toml, reap, scrape_value, stage_pids, wait_for
from services.sink.events import LineWriter

FULL = Path("/dev/full")
pytestmark = pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")


def test_a_line_that_cannot_be_written_raises_naming_the_file() -> None:
    writer = LineWriter(FULL)
    with pytest.raises(OSError, match="cannot write /dev/full: No space left on device"):
        writer.write({"frame": 0})
    writer.close()


def test_lossless_a_full_disk_stops_the_run_naming_the_file(ipc_dir: Path, carphone: Path, model_path: Path) -> None:
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [("cam0", carphone, False)], classify={"model": model_path}))
    done = subprocess.run(
        [sys.executable, "-m", "deploy.launcher", "run", "--config", str(config), "--events", str(FULL)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == service.EXIT_CONFIG, output
    assert output.count("cannot write /dev/full: No space left on device; stopping") == 1, output
    assert "restart " not in output


def test_live_a_full_disk_is_counted_and_logged_now_and_then_while_the_pipeline_goes_on(
    ipc_dir: Path, carphone: Path, model_path: Path
) -> None:
    port = free_port()
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [], classify={"model": model_path}, sink={"metrics_port": port}))
    log = ipc_dir / "run.log"
    proc = launch(config, log, "--source", f"cam0={carphone}", "--loop", "--realtime", "--events", str(FULL))
    failed = 'emopipe_frames_dropped_total{reason="write_error",stage="sink"}'
    processed = 'emopipe_frames_processed_total{camera="cam0",stage="sink"}'
    try:
        assert wait_for(lambda: scrape_value(port, failed) > 20, 60), log.read_text()[-3000:]
        first = scrape_value(port, processed)
        time.sleep(2.0)
        assert scrape_value(port, processed) > first + 10  # still processing frames
        assert scrape_value(port, failed) >= scrape_value(port, processed) - 1  # every line counted as lost
        pid = stage_pids(log)["sink"]
        assert proc.poll() is None and stage_pids(log)["sink"] == pid  # not restarted
        assert 1 <= log.read_text().count("cannot write /dev/full") <= 2  # throttled: one per 10 s
    finally:
        proc.terminate()
        proc.wait(30)
        reap(proc, log)
