"""Every Grafana panel query returns data from a real Prometheus scraping a running pipeline.

The pipeline runs on the real carphone video (conftest's fixture), looped, as two cameras (so "every camera"
means two), with its metrics on free ports. Prometheus runs deploy/prometheus/prometheus.yml
with only the targets and the scrape interval (1 s) rewritten. Each `expr` of
deploy/grafana/dashboards/*.json is sent to Prometheus's HTTP API with Grafana's macros
and template variables replaced, and must come back `success` with at least one series
within 30 s of the pipeline's start (the issue's acceptance criterion).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.prometheus import dashboard_check, server
from emopipe.metrics import STAGES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(server.find_binary() is None, reason=server.INSTALL_HINT),
]

CAMERAS = ("cam-a", "cam-b")
SCRAPE_INTERVAL_S = 1.0
DATA_DEADLINE_S = 30.0
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Pipeline:
    process: subprocess.Popen[bytes]
    started: float  # time.monotonic() at launch
    ports: dict[str, int]
    log_file: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def pipeline_config(video: Path, model: Path, ports: dict[str, int], ipc_dir: Path) -> str:
    """Two cameras playing `video` in a loop, metrics on `ports`, ipc:// endpoints, no web viewer."""
    sources = "".join(f'[[sources]]\nid = "{camera}"\nuri = "{video}"\nloop = true\n\n' for camera in CAMERAS)
    stages = "".join(f"[{stage}]\nmetrics_port = {port}\n\n" for stage, port in ports.items())
    return (
        sources
        + stages.replace("[classify]\n", f'[classify]\nmodel = "{model}"\n')
        + "[endpoints]\n"
        + "".join(f'{name} = "ipc://{ipc_dir}/{name}"\n' for name in ("frames", "faces", "results"))
        + "\n[viewer]\nport = 0\n"
    )


@pytest.fixture(scope="module")
def pipeline(carphone: Path, model_path: Path) -> Iterator[Pipeline]:
    tmp = Path(tempfile.mkdtemp(prefix="ep-prom-", dir="/tmp"))  # short: ipc:// paths are limited
    ports = dict(zip(STAGES, free_ports(len(STAGES)), strict=True))
    config = tmp / "emopipe.toml"
    config.write_text(pipeline_config(carphone, model_path, ports, tmp))
    log_file = tmp / "pipeline.log"
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "deploy.launcher", "run", "--config", str(config)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    pipeline = Pipeline(process, time.monotonic(), ports, log_file)
    try:
        yield pipeline
    finally:
        stop_pipeline(pipeline)
        shutil.rmtree(tmp, ignore_errors=True)


def stop_pipeline(pipeline: Pipeline, timeout: float = 30.0) -> None:
    """SIGTERM the launcher, which stops its stages in order; SIGKILL everything it started if it hangs."""
    if pipeline.process.poll() is None:
        pipeline.process.terminate()
        try:
            pipeline.process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pipeline.process.kill()
            pipeline.process.wait(timeout=timeout)
    # The stages run in their own process groups; the launcher logs each one's pid.
    for pid in re.findall(r"started \w+ \(pid (\d+)\)", pipeline.log_file.read_text(errors="replace")):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass  # already stopped: the normal case


@pytest.fixture(scope="module")
def prometheus(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.PrometheusServer]:
    tmp = tmp_path_factory.mktemp("prometheus")
    targets = {stage: f"127.0.0.1:{port}" for stage, port in pipeline.ports.items()}
    config = server.with_targets(server.load_config(), targets, scrape_interval=f"{SCRAPE_INTERVAL_S:g}s")
    (port,) = free_ports(1)
    prometheus = server.start(server.write_config(config, tmp / "prometheus.yml"), tmp / "data", f"127.0.0.1:{port}")
    try:
        prometheus.wait_ready(timeout=30)
        yield prometheus
    finally:
        prometheus.stop()


def evaluate_all(url: str, values: dict[str, str]) -> dict[dashboard_check.PanelQuery, int]:
    """Number of series each panel query returns, with `values` for macros and variables."""
    dashboards = dashboard_check.load_dashboards()
    return {
        query: len(dashboard_check.instant_query(url, dashboard_check.substitute(query.expr, values)))
        for name, dashboard in dashboards.items()
        for query in dashboard_check.panel_queries(dashboard, name)
    }


def wait_for_all_data(url: str, values: dict[str, str], deadline: float) -> dict[dashboard_check.PanelQuery, int]:
    while True:
        counts = evaluate_all(url, values)
        if all(counts.values()) or time.monotonic() > deadline:
            return counts
        time.sleep(SCRAPE_INTERVAL_S)


def describe_empty(counts: dict[dashboard_check.PanelQuery, int]) -> list[str]:
    return [f"{q.dashboard}: {q.panel} [{q.ref_id}]: {q.expr}" for q, n in counts.items() if n == 0]


def all_variables(camera: str = ".*", stage: str = ".*") -> dict[str, str]:
    return {**dashboard_check.macro_values(SCRAPE_INTERVAL_S), "camera": camera, "stage": stage}


def test_every_panel_query_returns_data_within_30_s_of_the_pipeline_start(
    pipeline: Pipeline, prometheus: server.PrometheusServer
) -> None:
    counts = wait_for_all_data(prometheus.url, all_variables(), pipeline.started + DATA_DEADLINE_S)
    elapsed = time.monotonic() - pipeline.started
    assert pipeline.process.poll() is None, f"pipeline exited:\n{pipeline.log_tail()}"
    assert describe_empty(counts) == [], f"after {elapsed:.1f} s; pipeline log:\n{pipeline.log_tail()}"
    assert len(counts) >= 20
    print(f"{len(counts)} panel queries returned data {elapsed:.1f} s after the pipeline started")


def test_end_to_end_latency_histogram_has_samples_for_every_camera(
    pipeline: Pipeline, prometheus: server.PrometheusServer
) -> None:
    series = dashboard_check.instant_query(prometheus.url, "emopipe_end_to_end_latency_seconds_count > 0")
    assert sorted(s["metric"]["camera"] for s in series) == sorted(CAMERAS)
    assert {s["metric"]["job"] for s in series} == {"emopipe-sink"}


def test_template_variables_list_both_cameras_and_every_stage(prometheus: server.PrometheusServer) -> None:
    (dashboard,) = dashboard_check.load_dashboards().values()
    listed = {
        v.name: dashboard_check.label_values(prometheus.url, v.metric, v.label)
        for v in dashboard_check.variable_queries(dashboard)
    }
    assert listed == {"camera": sorted(CAMERAS), "stage": sorted(STAGES)}


@pytest.mark.parametrize("camera", CAMERAS)
def test_every_per_camera_query_returns_data_for_each_single_camera(
    camera: str, pipeline: Pipeline, prometheus: server.PrometheusServer
) -> None:
    """What Grafana shows with one camera selected, and in each repeated emotion-mix panel."""
    counts = wait_for_all_data(prometheus.url, all_variables(camera=camera), pipeline.started + DATA_DEADLINE_S)
    per_camera = {q: n for q, n in counts.items() if "$camera" in q.expr}
    assert len(per_camera) >= 15
    assert describe_empty(per_camera) == []


def test_predictions_use_exactly_the_labels_the_model_info_reports(prometheus: server.PrometheusServer) -> None:
    (info,) = dashboard_check.instant_query(prometheus.url, 'emopipe_model_info{sha256!=""}')
    emotions = dashboard_check.label_values(prometheus.url, "emopipe_predictions_total", "emotion")
    assert emotions == sorted(info["metric"]["labels"].split(","))
    assert len(info["metric"]["sha256"]) == 64


def test_every_stage_target_is_scraped_and_up(prometheus: server.PrometheusServer) -> None:
    series = dashboard_check.instant_query(prometheus.url, 'up{job=~"emopipe-.*"}')
    assert {s["metric"]["stage"]: s["value"][1] for s in series} == dict.fromkeys(STAGES, "1")


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def test_emopipe_run_prometheus_scrapes_every_stage_and_stops_prometheus_on_exit(
    carphone: Path, model_path: Path
) -> None:
    """`emopipe run --prometheus` on non-default metrics ports: the rewritten config scrapes all four stages."""
    tmp = Path(tempfile.mkdtemp(prefix="ep-run-", dir="/tmp"))
    ports = dict(zip(STAGES, free_ports(len(STAGES)), strict=True))
    (prometheus_port,) = free_ports(1)
    url = f"http://127.0.0.1:{prometheus_port}"
    config = tmp / "emopipe.toml"
    config.write_text(pipeline_config(carphone, model_path, ports, tmp))
    log_file = tmp / "launcher.log"
    command = [sys.executable, "-m", "deploy.launcher", "run", "--config", str(config), "--prometheus"]
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            [*command, f"--prometheus-listen=127.0.0.1:{prometheus_port}"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    launcher = Pipeline(process, time.monotonic(), ports, log_file)
    try:

        def all_stages_up() -> bool:
            try:
                series = dashboard_check.instant_query(url, 'up{job=~"emopipe-.*"} == 1')
            except (OSError, RuntimeError):
                return False  # Prometheus not listening yet
            return sorted(s["metric"]["stage"] for s in series) == sorted(STAGES)

        assert wait_for(all_stages_up, DATA_DEADLINE_S), launcher.log_tail()
        output = log_file.read_text()
        assert f"prometheus: {url}/ scraping with " in output
        assert "docker compose -f deploy/compose.yml up grafana" in output
        scraped_with = Path(re.findall(r"scraping with (\S+)", output)[0])
        assert scraped_with != server.SHIPPED_CONFIG, "non-default ports need the rewritten copy"
    finally:
        stop_pipeline(launcher)
        shutil.rmtree(tmp, ignore_errors=True)
    assert process.returncode == 0, launcher.log_tail()
    assert not scraped_with.parent.exists(), "the temporary TSDB directory is left behind"
    with pytest.raises(OSError):
        dashboard_check.instant_query(url, "up")


def test_dashboard_check_command_reports_every_query_with_data(
    pipeline: Pipeline, prometheus: server.PrometheusServer
) -> None:
    wait_for_all_data(prometheus.url, all_variables(), pipeline.started + DATA_DEADLINE_S)
    command = [sys.executable, "-m", "deploy.prometheus.dashboard_check", "--url", prometheus.url]
    result = subprocess.run(
        [*command, "--scrape-interval", f"{SCRAPE_INTERVAL_S:g}"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    total = len(evaluate_all(prometheus.url, all_variables()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"{total}/{total} queries returned data"
    assert "NO DATA" not in result.stdout
