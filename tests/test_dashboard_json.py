"""The Grafana dashboard and its provisioning: fixed uids, only exported metrics, every metric shown.

These checks need neither Grafana nor Prometheus; tests/test_prometheus_dashboards.py
evaluates the same queries against a real Prometheus scraping a running pipeline.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from deploy.prometheus import dashboard_check
from emopipe import metrics

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
DASHBOARDS = dashboard_check.load_dashboards(GRAFANA / "dashboards")
DASHBOARD_UIDS = {"emopipe.json": "emopipe-overview"}
QUANTILES = {"0.5", "0.95", "0.99"}


def provisioned_datasource() -> dict[str, Any]:
    (datasource,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    return dict(datasource)


def exported_series_names() -> set[str]:
    """Every sample name the stages expose, from the pipeline's own metric definitions."""
    names: set[str] = set()
    for stage in metrics.STAGES:
        registry = CollectorRegistry()
        metrics.create(registry, stage, cameras=["cam0"], emotions=["happy"])
        for family in registry.collect():
            names.update(sample.name for sample in family.samples if not sample.name.endswith("_created"))
    return names


def all_queries() -> list[dashboard_check.PanelQuery]:
    return [q for name, dashboard in DASHBOARDS.items() for q in dashboard_check.panel_queries(dashboard, name)]


def test_each_dashboard_has_its_fixed_uid_so_links_survive_reprovisioning() -> None:
    assert {name: dashboard["uid"] for name, dashboard in DASHBOARDS.items()} == DASHBOARD_UIDS


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_target_and_variable_uses_the_provisioned_datasource_uid(name: str) -> None:
    datasource = provisioned_datasource()
    expected = {"type": "prometheus", "uid": datasource["uid"]}
    dashboard = DASHBOARDS[name]
    for panel in dashboard_check.iter_panels(dashboard):
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, (panel["title"], target["refId"])
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == expected, variable["name"]


def test_datasource_scrape_interval_matches_prometheus_yml_so_rate_interval_is_right() -> None:
    prometheus_yml = yaml.safe_load((GRAFANA.parent / "prometheus" / "prometheus.yml").read_text())
    assert provisioned_datasource()["jsonData"]["timeInterval"] == prometheus_yml["global"]["scrape_interval"]


def test_dashboard_provider_reads_the_directory_compose_mounts_the_dashboards_at() -> None:
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "emopipe.yml").read_text())["providers"]
    compose = yaml.safe_load((GRAFANA.parent / "compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_every_panel_has_a_title_and_at_least_one_query() -> None:
    for dashboard in DASHBOARDS.values():
        for panel in dashboard_check.iter_panels(dashboard):
            assert panel["title"].strip()
            assert panel["targets"], panel["title"]


def test_every_expr_selects_only_metrics_the_pipeline_exports() -> None:
    exported = exported_series_names()
    unknown = {q.panel: dashboard_check.metric_names(q.expr) - exported for q in all_queries()}
    assert {panel: names for panel, names in unknown.items() if names} == {}


def test_every_exported_metric_family_is_on_some_panel() -> None:
    registry = CollectorRegistry()
    metrics.create(registry, "sink", cameras=["cam0"])
    families = {family.name for family in registry.collect()}
    used = set().union(*(dashboard_check.metric_names(q.expr) for q in all_queries()))
    shown = {family for family in families if any(name.startswith(family) for name in used)}
    assert shown == families


@pytest.mark.parametrize(
    ("metric", "by"),
    [
        ("emopipe_end_to_end_latency_seconds", "camera"),
        ("emopipe_stage_latency_seconds", "stage"),
        ("emopipe_transport_delay_seconds", "stage"),
    ],
)
def test_latency_histograms_are_shown_as_p50_p95_p99(metric: str, by: str) -> None:
    pattern = re.compile(rf"histogram_quantile\((0\.\d+), sum by \(le, {by}\) \(rate\({metric}_bucket\{{")
    found = {m.group(1) for q in all_queries() if (m := pattern.match(q.expr))}
    assert found == QUANTILES


def test_rate_windows_follow_the_scrape_interval_via_rate_interval() -> None:
    """Hard-coded windows break when the scrape interval changes; increase() over the range is fine."""
    windows = {w for q in all_queries() for w in re.findall(r"\[([^\]]+)\]", q.expr)}
    assert windows <= {"$__rate_interval", "$__range"}


def test_every_variable_in_an_expr_is_defined_by_the_dashboard_or_grafana() -> None:
    for name, dashboard in DASHBOARDS.items():
        values = dashboard_check.macro_values(5.0)
        values.update({v.name: ".*" for v in dashboard_check.variable_queries(dashboard)})
        for query in dashboard_check.panel_queries(dashboard, name):
            assert "$" not in dashboard_check.substitute(query.expr, values)


def test_template_variables_list_label_values_of_exported_series() -> None:
    exported = exported_series_names()
    variables = [v for dashboard in DASHBOARDS.values() for v in dashboard_check.variable_queries(dashboard)]
    assert {(v.name, v.label) for v in variables} == {("camera", "camera"), ("stage", "stage")}
    assert all(v.metric in exported for v in variables)


def test_emotion_mix_is_repeated_per_camera() -> None:
    (panel,) = [p for p in dashboard_check.iter_panels(DASHBOARDS["emopipe.json"]) if p.get("repeat")]
    assert panel["repeat"] == "camera"
    assert "emopipe_predictions_total" in panel["targets"][0]["expr"]
    assert panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "percent"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_fit_the_24_column_grid_without_overlapping(name: str) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in DASHBOARDS[name]["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panel_ids_are_unique(name: str) -> None:
    ids = [panel["id"] for panel in DASHBOARDS[name]["panels"]]
    assert len(ids) == len(set(ids))
