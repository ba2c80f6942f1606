"""Prometheus metric definitions shared by every stage (names are the dashboards' contract).

Each stage builds a ``Metrics`` on its own ``CollectorRegistry`` with the cameras it
serves, so every label value exists (at zero) from the first scrape, and serves it on
``/metrics`` with ``serve``. Rates are left to PromQL.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from emopipe import topology

log = logging.getLogger(__name__)

STAGES = topology.names()
DROP_REASONS = (
    "stale",
    "malformed",
    "oversized",
    "version",
    "read_error",
    "wrong_size",
    "write_error",
    "hwm",
    "lost",  # a pool's unit given up (emopipe/workpool/protocol.py): live, unanswered in time
    "failed",  # a pool's unit given up after its tries went wrong
)
#: 1 ms .. 5 s, roughly x2 per step
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    end_to_end_latency: Histogram  # {camera}
    stage_latency: Histogram  # {stage, camera}
    transport_delay: Histogram  # {stage, camera}
    frames_processed: Counter  # {stage, camera}
    frames_dropped: Counter  # {stage, reason}
    faces_detected: Counter  # {camera}
    predictions: Counter  # {camera, emotion}
    camera_up: Gauge  # {camera}
    camera_reconnects: Counter  # {camera}
    frames_shared: Counter  # {camera}: capture only
    subscriptions_refused: Counter  # {stage}
    model_info: Info | None  # classify only: the other stages serve no model


def create(
    registry: CollectorRegistry,
    stage: str,
    cameras: Sequence[str],
    emotions: Sequence[str] = (),
) -> Metrics:
    """Define every emopipe metric on ``registry``, with label values for ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}, expected one of {STAGES}")
    m = Metrics(
        registry=registry,
        end_to_end_latency=Histogram(
            "emopipe_end_to_end_latency_seconds",
            "Capture timestamp to annotated overlay rendered (sink).",
            ["camera"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        stage_latency=Histogram(
            "emopipe_stage_latency_seconds",
            "Processing time of one frame inside a stage.",
            ["stage", "camera"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        transport_delay=Histogram(
            "emopipe_transport_delay_seconds",
            "Upstream stage sent a message to this stage received it.",
            ["stage", "camera"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        frames_processed=Counter(
            "emopipe_frames_processed_total", "Frames processed by a stage.", ["stage", "camera"], registry=registry
        ),
        frames_dropped=Counter(
            "emopipe_frames_dropped_total",
            "Frames or messages dropped, by reason.",
            ["stage", "reason"],
            registry=registry,
        ),
        faces_detected=Counter("emopipe_faces_detected_total", "Faces found by detect.", ["camera"], registry=registry),
        predictions=Counter(
            "emopipe_predictions_total",
            "Faces written by the sink, by their track's smoothed emotion.",
            ["camera", "emotion"],
            registry=registry,
        ),
        camera_up=Gauge("emopipe_camera_up", "1 while the camera delivers frames.", ["camera"], registry=registry),
        camera_reconnects=Counter(
            "emopipe_camera_reconnects_total",
            "Times capture reopened a failed live source.",
            ["camera"],
            registry=registry,
        ),
        frames_shared=Counter(
            "emopipe_frames_shared_total",
            "Frames capture put in shared memory for a detect worker on its host (not sent through the socket).",
            ["camera"],
            registry=registry,
        ),
        subscriptions_refused=Counter(
            "emopipe_subscriptions_refused_total",
            "Subscriptions a stage's publisher refused: no pipeline topic, or over the limit.",
            ["stage"],
            registry=registry,
        ),
        model_info=Info("emopipe_model", "The emotion model classify serves.", registry=registry)
        if stage == "classify"
        else None,
    )
    _initialise(m, stage, cameras, emotions)
    return m


def _initialise(m: Metrics, stage: str, cameras: Sequence[str], emotions: Sequence[str]) -> None:
    for reason in DROP_REASONS:
        m.frames_dropped.labels(stage=stage, reason=reason)
    if stage != "sink":  # the sink publishes nothing
        m.subscriptions_refused.labels(stage=stage)
    for camera in cameras:
        m.stage_latency.labels(stage=stage, camera=camera)
        m.frames_processed.labels(stage=stage, camera=camera)
        if stage != "capture":
            m.transport_delay.labels(stage=stage, camera=camera)
        if stage == "capture":
            m.camera_up.labels(camera=camera).set(0)
            m.camera_reconnects.labels(camera=camera)
            m.frames_shared.labels(camera=camera)
        if stage == "detect":
            m.faces_detected.labels(camera=camera)
        if stage == "sink":
            for emotion in emotions:
                m.predictions.labels(camera=camera, emotion=emotion)
        if stage == "sink":
            m.end_to_end_latency.labels(camera=camera)


#: a pooled stage's workers on one host serve metrics on its port, port + 10, ... (this many)
WORKER_PORTS = 10
WORKER_PORT_STEP = 10


def worker_ports(port: int, count: int = WORKER_PORTS) -> list[int]:
    """Where the workers of a pooled stage serve metrics on one host: the first ``count``."""
    return [port + WORKER_PORT_STEP * k for k in range(count)] if port else []


def serve(metrics: Metrics, port: int, host: str, pooled: bool = False) -> int:
    """Serve ``/metrics`` on ``host:port`` (port 0: metrics are off); a pooled stage's worker
    takes the first free one of ``worker_ports(port)``. Returns the port."""
    if port == 0:
        log.info("metrics disabled (port 0)")
        return 0
    candidates = worker_ports(port) if pooled else [port]
    for candidate in candidates:
        try:
            start_http_server(candidate, addr=host, registry=metrics.registry)
        except OSError as exc:
            if candidate != candidates[-1] and exc.errno == errno.EADDRINUSE:
                continue  # another worker of this stage has it
            tried = f"{port}..{candidate} (every {WORKER_PORT_STEP})" if pooled else str(port)
            raise OSError(f"cannot serve metrics on {host}:{tried}: {exc.strerror or exc}") from exc
        log.info("metrics on http://%s:%d/metrics", host, candidate)
        return candidate
    raise AssertionError("unreachable: the last candidate raises")
