"""detect: find faces in every frame, publish their boxes and 48x48 grey crops."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import zmq
from prometheus_client import CollectorRegistry

from emopipe import bus, relay, service
from emopipe import metrics as metrics_mod
from emopipe.bus import Publisher, SubscriberTimeoutError
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
    hwm = cfg.bus.lossless_hwm if cfg.lossless else cfg.bus.live_hwm
    ctx = zmq.Context()
    sub = bus.subscriber(ctx, cfg.endpoints.frames, bus.topics_for(["frame", "eos"], cfg.detect.cameras), hwm)
    pub = Publisher(
        ctx,
        cfg.endpoints.faces,
        lossless=cfg.lossless,
        hwm=hwm,
        subscribers=cfg.detect.subscribers,
        subscribe_timeout_s=cfg.bus.subscribe_timeout_s,
        stop=stop,
    )
    log.info("frames from %s -> faces on %s", cfg.endpoints.frames, cfg.endpoints.faces)
    try:
        relay.run("detect", sub, pub, Frame, make_handler(detector, metrics), metrics, stop)
        return 0
    except SubscriberTimeoutError as exc:
        log.error("%s", exc)
        return 1
    finally:
        sub.close(linger=0)
        pub.close()
        ctx.term()
