"""detect: find faces in every frame, publish their boxes and 48x48 grey crops."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from emopipe import metrics as metrics_mod
from emopipe import relay, service
from emopipe.messages import Faces, Frame, Message
from emopipe.metrics import Metrics
from services.detect.detector import FaceDetector

log = logging.getLogger("emopipe.detect")


def make_handler(detector: FaceDetector, metrics: Metrics) -> relay.Handler:
    def handle(msg: Message) -> Faces:
        assert isinstance(msg, Frame)
        boxes, crops = detector.detect(msg.image)
        metrics.faces_detected.labels(camera=msg.camera).inc(len(boxes))
        return Faces(camera=msg.camera, seq=msg.seq, ts=msg.ts, boxes=boxes, crops=crops)

    return handle


def main(argv: Sequence[str] | None = None) -> int:
    cfg, stop = service.setup("detect", argv)
    detector = FaceDetector(cfg.detect)
    cameras = cfg.detect.cameras or cfg.cameras
    metrics = metrics_mod.create(CollectorRegistry(), "detect", cameras)
    metrics_mod.serve(metrics, cfg.detect.metrics_port, cfg.pipeline.metrics_host)
    handler = make_handler(detector, metrics)
    return relay.serve(
        "detect", cfg, (cfg.endpoints.frames, "frame"), cfg.endpoints.faces, Frame, handler, metrics, stop
    )
