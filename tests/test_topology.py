"""The pipeline's shape is one table (emopipe/topology.py): what derives from it agrees with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from deploy import launcher
from emopipe import config, curve, messages, metrics, topology

REPO = Path(__file__).resolve().parent.parent


def test_the_config_has_one_endpoint_per_link_and_the_tables_defaults() -> None:
    endpoints = config.EndpointsConfig()
    assert [f.name for f in dataclasses.fields(endpoints)] == [link.name for link in topology.links()]
    assert all(getattr(endpoints, link.name) == link.endpoint for link in topology.links())
    defaults = config.Config()
    assert {s.name: getattr(defaults, s.name).metrics_port for s in topology.STAGES} == {
        "capture": 9101,
        "detect": 9102,
        "classify": 9103,
        "sink": 9104,
    }


def test_stages_links_and_pools_come_from_the_table() -> None:
    assert curve.LINKS == ("frames", "faces", "results")
    assert metrics.STAGES == ("capture", "detect", "classify", "sink")
    assert launcher.START_ORDER == ("sink", "classify", "detect", "capture")
    assert config.POOLS == ("detect", "classify")
    assert config.parse_workers(["classify=3"]) == {"classify": 3}
    assert [(s.name, s.policy, s.live_window) for s in topology.pools()] == [
        ("detect", topology.STICKY, 1),
        ("classify", topology.LEAST_BUSY, 2),
    ]
    assert all(link.kind in messages.KINDS for link in topology.links())


def test_each_stage_has_a_service_module_and_a_console_script() -> None:
    text = (REPO / "pyproject.toml").read_text()
    for name in topology.names():
        assert (REPO / "services" / name / "__main__.py").is_file()
        assert f'emopipe-{name} = "services.{name}.main:main"' in text
