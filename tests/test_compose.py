"""deploy/compose.yml: valid for docker compose, and wired to the shipped Prometheus and Grafana files."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from emopipe import config as config_mod
from emopipe import sample_video, topology

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
COMPOSE = DEPLOY / "compose.yml"


@functools.lru_cache(maxsize=2)
def resolved(path: Path = COMPOSE) -> dict[str, Any]:
    """`docker-compose config`: the file validated and with paths made absolute (needs no Docker engine)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (Debian package docker-compose; .ci/run installs it)")
    result = subprocess.run([binary, "-f", str(path), "config"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def resolved_compose() -> dict[str, Any]:
    return resolved(COMPOSE)


def resolved_scaled() -> dict[str, Any]:
    return resolved(DEPLOY / "compose.scaled.yml")


def test_compose_file_is_valid_and_runs_pipeline_prometheus_and_grafana() -> None:
    services = resolved_compose()["services"]
    assert set(services) == {"emopipe", "prometheus", "grafana"}
    assert {name: service["network_mode"] for name, service in services.items()} == dict.fromkeys(services, "host")


def test_prometheus_service_uses_the_shipped_scrape_config_on_loopback() -> None:
    prometheus = resolved_compose()["services"]["prometheus"]
    assert f"{DEPLOY / 'prometheus' / 'prometheus.yml'}:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "--web.listen-address=127.0.0.1:9090" in prometheus["command"]


def test_grafana_service_mounts_the_provisioning_and_dashboards_it_loads() -> None:
    grafana = resolved_compose()["services"]["grafana"]
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "emopipe.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert f"{DEPLOY / 'grafana' / 'provisioning'}:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert f"{DEPLOY / 'grafana' / 'dashboards'}:{dashboards_path}:ro" in grafana["volumes"]
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (DEPLOY / "grafana" / "dashboards" / home.relative_to(dashboards_path)).is_file()


def test_grafana_datasource_url_is_where_compose_prometheus_listens() -> None:
    datasources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    prometheus = resolved_compose()["services"]["prometheus"]
    listen = next(arg for arg in prometheus["command"] if arg.startswith("--web.listen-address="))
    assert datasources["datasources"][0]["url"] == "http://" + listen.split("=", 1)[1]


def test_pipeline_service_defaults_to_the_video_the_image_bakes_in() -> None:
    """Without EMOPIPE_SOURCE the stack must run on the carphone video fetched in deploy/Dockerfile."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (cache,) = re.findall(r"^ENV EMOPIPE_CACHE=(\S+)$", dockerfile, flags=re.MULTILINE)
    assert "sample_video.carphone()" in dockerfile
    command = resolved_compose()["services"]["emopipe"]["command"]
    assert command[:2] == ["run", "--source"]
    assert command[2] == f"{cache}/{sample_video.FILE_NAME}"
    assert "--loop" in command


def test_the_scaled_compose_file_runs_each_stage_with_replicas_for_the_pools() -> None:
    services = resolved_scaled()["services"]
    replicas = {name: s.get("deploy", {}).get("replicas", 1) for name, s in services.items()}
    stages = {stage.name: 2 if stage.pooled else 1 for stage in topology.STAGES}
    assert replicas == {**stages, "prometheus": 1, "grafana": 1}
    for stage in topology.names():
        assert services[stage]["entrypoint"][0] == f"emopipe-{stage}"


def test_the_scaled_stages_reach_capture_by_name_and_capture_binds_those_ports() -> None:
    services = resolved_scaled()["services"]
    cfg = config_mod.load(DEPLOY / "compose.scaled.toml", environ={})
    assert not cfg.lossless and cfg.cameras == ["cam0"]
    binds = services["capture"]["environment"]
    for link in (link.name for link in topology.links()):
        connect = getattr(cfg.endpoints, link)
        port = connect.rsplit(":", 1)[1]
        assert connect == f"tcp://capture:{port}"
        assert binds[f"EMOPIPE__ENDPOINTS__{link.upper()}"] == f"tcp://0.0.0.0:{port}"


def test_the_scaled_prometheus_finds_every_replica_by_dns_with_the_shipped_job_names() -> None:
    scaled = yaml.safe_load((DEPLOY / "prometheus" / "compose-scaled.yml").read_text())
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    ports = {stage: getattr(config_mod.Config(), stage).metrics_port for stage in topology.names()}
    jobs = {job["job_name"]: job for job in scaled["scrape_configs"]}
    assert set(jobs) == {job["job_name"] for job in shipped["scrape_configs"]}
    for stage, port in ports.items():
        (sd,) = jobs[f"emopipe-{stage}"]["dns_sd_configs"]
        assert sd == {"names": [stage], "type": "A", "port": port}
    promtool = shutil.which("promtool")
    if promtool is not None:  # Debian's prometheus package ships it
        check = subprocess.run(
            [promtool, "check", "config", str(DEPLOY / "prometheus" / "compose-scaled.yml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr
