"""Run a local Prometheus server that scrapes the emopipe stages.

Used by `emopipe run --prometheus` and by the integration tests. The scrape
configuration is always deploy/prometheus/prometheus.yml; when the stages' metrics
ports differ from its defaults, a copy with the targets rewritten is written next to
the TSDB, so the shipped file stays the single description of the scrape jobs.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from emopipe.metrics import worker_ports

SHIPPED_CONFIG = Path(__file__).with_name("prometheus.yml")
JOB_PREFIX = "emopipe-"
DEFAULT_LISTEN = "127.0.0.1:9090"
GRAFANA_URL = "http://127.0.0.1:3000"
INSTALL_HINT = (
    "the `prometheus` binary is not installed; on Debian/Ubuntu run "
    "`apt-get install --no-install-recommends prometheus`"
)


def find_binary() -> str | None:
    """Path of the `prometheus` executable on PATH, or None when it is not installed."""
    return shutil.which("prometheus")


def load_config(path: Path = SHIPPED_CONFIG) -> dict[str, Any]:
    """The scrape configuration as a dict."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict) or "scrape_configs" not in config:
        raise ValueError(f"{path}: not a Prometheus configuration (no scrape_configs)")
    return config


def stage_targets(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Scrape targets per stage, from the `emopipe-<stage>` jobs."""
    targets: dict[str, list[str]] = {}
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if not name.startswith(JOB_PREFIX):
            continue
        stage = name.removeprefix(JOB_PREFIX)
        targets[stage] = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
    return targets


def with_targets(
    config: Mapping[str, Any],
    targets: Mapping[str, str | Sequence[str]],
    scrape_interval: str | None = None,
) -> dict[str, Any]:
    """A copy of `config` scraping `targets` ({stage: "host:port"}, or a list of them) instead.

    Raises ValueError naming the stage when the config has no job for it.
    """
    rewritten: dict[str, Any] = copy.deepcopy(dict(config))
    jobs = {job["job_name"]: job for job in rewritten["scrape_configs"]}
    for stage, target in targets.items():
        job = jobs.get(JOB_PREFIX + stage)
        if job is None:
            raise ValueError(f"no scrape job {JOB_PREFIX}{stage} in the Prometheus config")
        listed = [target] if isinstance(target, str) else list(target)
        job["static_configs"] = [{"targets": listed, "labels": {"stage": stage}}]
    if scrape_interval is not None:
        rewritten.setdefault("global", {})
        rewritten["global"]["scrape_interval"] = scrape_interval
        rewritten["global"]["evaluation_interval"] = scrape_interval
    return rewritten


def config_for_ports(
    stage_ports: Mapping[str, int], host: str = "127.0.0.1", workers: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """The shipped config scraping `host:port` per stage (each of a pooled stage's `workers`: its
    port, port + 10, ...); a stage with port 0 (metrics off) is not scraped."""
    counts = workers or {}
    targets = {
        stage: [f"{host}:{p}" for p in worker_ports(port, counts.get(stage, 1))]
        for stage, port in stage_ports.items()
        if port
    }
    config = with_targets(load_config(), {s: t[0] if len(t) == 1 else t for s, t in targets.items()})
    off = {JOB_PREFIX + stage for stage, port in stage_ports.items() if not port}
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] not in off]
    return config


def write_config(config: Mapping[str, Any], path: Path) -> Path:
    """Write `config` as YAML to `path` and return the path."""
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    return path


@dataclass
class PrometheusServer:
    """A running Prometheus process; stop() it (or use it as a context manager)."""

    process: subprocess.Popen[bytes]
    url: str
    config_file: Path
    log_file: Path
    remove_on_stop: Path | None = None  # a temporary data directory

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until /-/ready answers 200; raise RuntimeError with the log tail if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with status {self.process.returncode}:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready at {self.url} after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; remove a temporary data directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        if self.remove_on_stop is not None:
            shutil.rmtree(self.remove_on_stop, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start(
    config_file: Path,
    data_dir: Path,
    listen: str = DEFAULT_LISTEN,
    binary: str | None = None,
    retention: str = "1d",
) -> PrometheusServer:
    """Start Prometheus on `listen` with its TSDB and log under `data_dir`.

    Raises FileNotFoundError with the install hint when no binary is found.
    """
    executable = binary or find_binary()
    if executable is None:
        raise FileNotFoundError(INSTALL_HINT)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = data_dir / "prometheus.log"
    command = [
        executable,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data_dir / 'tsdb'}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address={listen}",
    ]
    log: IO[bytes]
    with open(log_file, "wb") as log:
        # Own session: Ctrl-C reaches the launcher only, which stops Prometheus after the stages.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return PrometheusServer(process, f"http://{listen}", config_file, log_file)


def start_for_pipeline(
    stage_ports: Mapping[str, int],
    listen: str = DEFAULT_LISTEN,
    binary: str | None = None,
    workers: Mapping[str, int] | None = None,
) -> PrometheusServer:
    """Start Prometheus scraping the stages' metrics ports, with its TSDB in a temporary directory.

    Uses deploy/prometheus/prometheus.yml itself when the ports are its defaults, else
    a copy with the targets rewritten. The directory is removed by stop().
    """
    config = config_for_ports(stage_ports, workers=workers)
    data_dir = Path(tempfile.mkdtemp(prefix="emopipe-prometheus-"))
    try:
        if config == load_config():
            config_file = SHIPPED_CONFIG
        else:
            config_file = write_config(config, data_dir / "prometheus.yml")
        prometheus = start(config_file, data_dir, listen, binary)
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    prometheus.remove_on_stop = data_dir
    return prometheus


def grafana_hint(prometheus_url: str) -> str:
    """How to watch the pipeline in Grafana, for the launcher to print."""
    hint = (
        f"Prometheus UI: {prometheus_url}/targets. For Grafana: "
        f"docker compose -f deploy/compose.yml up grafana, then open {GRAFANA_URL} "
        "(dashboard 'emopipe: pipeline overview')."
    )
    if prometheus_url != f"http://{DEFAULT_LISTEN}":
        hint += f" Grafana's provisioned datasource expects http://{DEFAULT_LISTEN}; point it at {prometheus_url}."
    return hint


def launch(
    stage_ports: Mapping[str, int], listen: str = DEFAULT_LISTEN, workers: Mapping[str, int] | None = None
) -> PrometheusServer | None:
    """`emopipe run --prometheus`: start and wait for Prometheus, print where it is and how to add Grafana.

    Returns None, after printing why, when there is no binary, no stage serves
    metrics, or Prometheus does not come up; the pipeline runs anyway.
    """
    if not any(stage_ports.values()):  # nothing to scrape: whether the binary exists does not matter
        print("prometheus: not started: every stage has metrics_port = 0", flush=True)
        return None
    if find_binary() is None:
        print(f"prometheus: not started: {INSTALL_HINT}", flush=True)
        print("  (or run both in containers: docker compose -f deploy/compose.yml up prometheus grafana)", flush=True)
        return None
    prometheus = start_for_pipeline(stage_ports, listen, workers=workers)
    try:
        prometheus.wait_ready(timeout=30)
    except RuntimeError as error:
        prometheus.stop()
        print(f"prometheus: not started: {error}", flush=True)
        return None
    print(f"prometheus: {prometheus.url}/ scraping with {prometheus.config_file}", flush=True)
    print(grafana_hint(prometheus.url), flush=True)
    return prometheus
