"""Metric definitions: the exact names the dashboards use, label values present from the start."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from emopipe import metrics


def exposition(stage: str, emotions: tuple[str, ...] = ()) -> str:
    registry = CollectorRegistry()
    metrics.create(registry, stage, ["cam0", "cam1"], emotions)
    return generate_latest(registry).decode()


def test_every_drop_reason_is_exported_at_zero_before_anything_happens() -> None:
    text = exposition("detect")
    for reason in metrics.DROP_REASONS:
        assert f'emopipe_frames_dropped_total{{reason="{reason}",stage="detect"}} 0.0' in text


def test_per_camera_series_exist_for_every_configured_camera() -> None:
    text = exposition("sink")
    for camera in ("cam0", "cam1"):
        assert f'emopipe_frames_processed_total{{camera="{camera}",stage="sink"}} 0.0' in text
        assert f'emopipe_end_to_end_latency_seconds_count{{camera="{camera}"}} 0.0' in text
        assert f'emopipe_transport_delay_seconds_count{{camera="{camera}",stage="sink"}} 0.0' in text


def test_the_sink_exports_a_prediction_series_per_model_label() -> None:
    text = exposition("sink", ("happy", "sad"))
    assert 'emopipe_predictions_total{camera="cam1",emotion="sad"} 0.0' in text
    assert 'emotion="angry"' not in text


def test_capture_exports_camera_up_and_reconnects() -> None:
    text = exposition("capture")
    assert 'emopipe_camera_up{camera="cam0"} 0.0' in text
    assert 'emopipe_camera_reconnects_total{camera="cam1"} 0.0' in text


def test_latency_buckets_cover_1_ms_to_5_s() -> None:
    assert metrics.LATENCY_BUCKETS[0] == 0.001 and metrics.LATENCY_BUCKETS[-1] == 5.0
    text = exposition("detect")
    assert 'emopipe_stage_latency_seconds_bucket{camera="cam0",le="0.001",stage="detect"} 0.0' in text


def test_model_info_is_exported_as_emopipe_model_info() -> None:
    registry = CollectorRegistry()
    m = metrics.create(registry, "classify", ["cam0"], ("happy",))
    assert m.model_info is not None
    m.model_info.info({"labels": "happy", "input_size": "48", "sha256": "ab", "path": "/m.onnx"})
    assert 'emopipe_model_info{input_size="48",labels="happy",path="/m.onnx",sha256="ab"} 1.0' in (
        generate_latest(registry).decode()
    )


@pytest.mark.parametrize("stage", ["capture", "detect", "sink"])
def test_only_classify_exports_model_info(stage: str) -> None:
    """A stage without a model must not export an empty emopipe_model_info series."""
    registry = CollectorRegistry()
    assert metrics.create(registry, stage, ["cam0"]).model_info is None
    assert "emopipe_model_info" not in generate_latest(registry).decode()


def test_unknown_stage_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown stage 'detector'"):
        metrics.create(CollectorRegistry(), "detector", [])
