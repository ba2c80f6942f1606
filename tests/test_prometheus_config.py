"""deploy/prometheus: the shipped scrape config, its rewriting, and the dashboard query helpers."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from deploy.prometheus import dashboard_check, server
from emopipe import topology


def test_shipped_config_scrapes_each_stage_at_the_launcher_default_port() -> None:
    defaults = {stage.name: stage.metrics_port for stage in topology.STAGES}
    expected = {stage: [f"127.0.0.1:{port}"] for stage, port in defaults.items()}
    assert server.stage_targets(server.load_config()) == expected


def test_every_stage_job_labels_its_series_with_the_stage_and_keeps_the_series_own_stage() -> None:
    for job in server.load_config()["scrape_configs"]:
        stage = job["job_name"].removeprefix(server.JOB_PREFIX)
        assert job["honor_labels"] is True, job["job_name"]
        assert [sc["labels"] for sc in job["static_configs"]] == [{"stage": stage}]


def test_with_targets_rewrites_only_the_named_stages_and_the_interval() -> None:
    shipped = server.load_config()
    rewritten = server.with_targets(shipped, {"detect": "127.0.0.1:19102"}, scrape_interval="1s")
    assert server.stage_targets(rewritten)["detect"] == ["127.0.0.1:19102"]
    assert server.stage_targets(rewritten)["sink"] == ["127.0.0.1:9104"]
    assert rewritten["global"]["scrape_interval"] == "1s"
    assert server.stage_targets(shipped)["detect"] == ["127.0.0.1:9102"], "the shipped config was modified"


def test_with_targets_names_a_stage_without_a_job() -> None:
    with pytest.raises(ValueError, match="emopipe-viewer"):
        server.with_targets(server.load_config(), {"viewer": "127.0.0.1:1"})


def test_start_without_a_binary_names_the_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install .*prometheus"):
        server.start(server.SHIPPED_CONFIG, tmp_path)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_the_shipped_and_a_rewritten_config(tmp_path: Path) -> None:
    rewritten = server.write_config(
        server.with_targets(server.load_config(), {"sink": "127.0.0.1:19104"}, "1s"), tmp_path / "p.yml"
    )
    for path in (server.SHIPPED_CONFIG, rewritten):
        check = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.95, sum by (le, stage) (rate(a_bucket{stage=~"$stage"}[$__rate_interval])))',
            {"a_bucket"},
        ),
        ("sum(rate(x_total[5m])) by (camera) / on(camera) group_left(emotion) y offset 1m > 1e3", {"x_total", "y"}),
        ('emopipe_model_info{sha256!=""}', {"emopipe_model_info"}),
    ],
)
def test_metric_names_ignores_functions_labels_windows_and_numbers(expr: str, names: set[str]) -> None:
    assert dashboard_check.metric_names(expr) == names


def test_substitute_replaces_both_variable_syntaxes_and_names_a_missing_one() -> None:
    values = {"__rate_interval": "4s", "camera": "a"}
    assert dashboard_check.substitute('r[$__rate_interval]{c=~"${camera}"}', values) == 'r[4s]{c=~"a"}'
    with pytest.raises(ValueError, match=r"\$stage"):
        dashboard_check.substitute('x{stage="$stage"}', {})


def test_rate_interval_is_four_scrape_intervals_like_grafana() -> None:
    assert dashboard_check.macro_values(5.0)["__rate_interval"] == "20s"
    assert dashboard_check.macro_values(1.0)["__rate_interval"] == "4s"


def test_config_for_ports_does_not_scrape_a_stage_whose_metrics_are_off() -> None:
    config = server.config_for_ports({"capture": 19101, "detect": 0, "classify": 9103, "sink": 9104})
    assert server.stage_targets(config) == {
        "capture": ["127.0.0.1:19101"],
        "classify": ["127.0.0.1:9103"],
        "sink": ["127.0.0.1:9104"],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.skipif(server.find_binary() is None, reason=server.INSTALL_HINT)
def test_start_for_pipeline_uses_the_shipped_file_for_default_ports_and_cleans_up_on_stop() -> None:
    defaults = {"capture": 9101, "detect": 9102, "classify": 9103, "sink": 9104}
    prometheus = server.start_for_pipeline(defaults, listen=f"127.0.0.1:{free_port()}")
    try:
        prometheus.wait_ready(timeout=30)
        assert prometheus.config_file == server.SHIPPED_CONFIG
        data_dir = prometheus.remove_on_stop
        assert data_dir is not None and data_dir.is_dir()
    finally:
        prometheus.stop()
    assert prometheus.process.returncode == 0
    assert not data_dir.exists()


def test_launch_without_a_binary_says_which_package_to_install_and_returns_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(server.shutil, "which", lambda name: None)
    assert server.launch({"capture": 9101}) is None
    output = capsys.readouterr().out
    assert "apt-get install --no-install-recommends prometheus" in output
    assert "docker compose -f deploy/compose.yml up prometheus grafana" in output


def test_launch_with_every_metrics_port_off_does_not_start_prometheus(capsys: pytest.CaptureFixture[str]) -> None:
    assert server.launch(dict.fromkeys(("capture", "detect", "classify", "sink"), 0)) is None
    assert "metrics_port = 0" in capsys.readouterr().out


def test_grafana_hint_names_the_compose_command_and_a_moved_prometheus() -> None:
    assert "docker compose -f deploy/compose.yml up grafana" in server.grafana_hint("http://127.0.0.1:9090")
    assert "point it at http://127.0.0.1:19090" in server.grafana_hint("http://127.0.0.1:19090")
    assert "point it at" not in server.grafana_hint("http://127.0.0.1:9090")


@pytest.mark.skipif(server.find_binary() is None, reason=server.INSTALL_HINT)
def test_instant_query_reports_prometheus_error_for_an_invalid_expression(tmp_path: Path) -> None:
    prometheus = server.start(server.SHIPPED_CONFIG, tmp_path, listen=f"127.0.0.1:{free_port()}")
    try:
        prometheus.wait_ready(timeout=30)
        with pytest.raises(RuntimeError, match="bad_data"):
            dashboard_check.instant_query(prometheus.url, "sum by (")
        with pytest.raises(RuntimeError, match="not a Prometheus API answer"):
            dashboard_check.api_get(prometheus.url, "/no-such-page", [])
    finally:
        prometheus.stop()
