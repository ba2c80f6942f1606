"""detect: find and track faces in every frame, publish their boxes, track ids and grey crops.

The crops are the size the emotion model takes: detect reads it from the model's metadata
(``classify.model``, the file classify serves), so no config repeats it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import cv2
from prometheus_client import CollectorRegistry

from emopipe import metrics as metrics_mod
from emopipe import relay, service
from emopipe.config import DetectConfig, resolve_path
from emopipe.messages import Box, Faces, Frame, Message
from emopipe.metrics import Metrics
from services.classify.model import ModelError, input_size
from services.detect.detector import FaceDetector
from services.detect.schedule import CameraDetector

log = logging.getLogger("emopipe.detect")


class Detect:
    """Per-camera scheduled detection and tracking (or, with ``every_frame``, the paper's full scan).

    Each camera has its own cascade (an OpenCV cascade is not safe to share between threads,
    and ``detect.threads`` runs cameras in parallel); the first is loaded at once, so a
    missing cascade stops the stage before it serves."""

    def __init__(self, cfg: DetectConfig, face_size: int) -> None:
        self.cfg = cfg
        self.face_size = face_size
        self.detectors: dict[str, FaceDetector] = {}
        self.spare: FaceDetector | None = FaceDetector(cfg, face_size)
        self.lock = threading.Lock()  # two cameras' first frames may come at once
        self.cameras: dict[str, CameraDetector] = {}
        self.seen: dict[str, int] = {}  # every_frame: a new id per box (no tracking)

    def detector(self, camera: str) -> FaceDetector:
        with self.lock:
            found = self.detectors.get(camera)
            if found is None:
                found, self.spare = self.spare or FaceDetector(self.cfg, self.face_size), None
                self.detectors[camera] = found
            return found

    def __call__(self, frame: Frame) -> Faces:
        gray = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
        detector = self.detector(frame.camera)
        if self.cfg.every_frame:
            height, width = gray.shape
            boxes = tuple(detector.find(gray, Box(0, 0, width, height), self.cfg.downscale, self.cfg.min_size))
            crops = detector.crops(gray, boxes)
            first = self.seen.get(frame.camera, 0) + 1
            self.seen[frame.camera] = first + len(boxes) - 1
            tracks = tuple(range(first, first + len(boxes)))
            return Faces(frame.camera, frame.seq, frame.ts, boxes, crops, tracks, wall=frame.wall)
        camera = self.cameras.get(frame.camera)
        if camera is None:
            camera = self.cameras[frame.camera] = CameraDetector.create(self.cfg, detector)
        faces = camera.process(gray, frame.ts)
        boxes = tuple(f.box for f in faces)
        crops = detector.crops(gray, boxes)
        return Faces(frame.camera, frame.seq, frame.ts, boxes, crops, tuple(f.track for f in faces), wall=frame.wall)


def make_handler(detect: Detect, metrics: Metrics) -> relay.Handler:
    def handle(msg: Message) -> Faces:
        assert isinstance(msg, Frame)
        faces = detect(msg)
        metrics.faces_detected.labels(camera=msg.camera).inc(len(faces.boxes))
        return faces

    return handle


def main(argv: Sequence[str] | None = None) -> int:
    cfg, stop = service.setup("detect", argv)
    cv2.setNumThreads(1)  # parallel by camera (detect.threads), not inside OpenCV: its default takes every core
    model = resolve_path(cfg.classify.model)
    try:
        face_size = input_size(model)
    except ModelError as exc:
        log.error("%s", exc)
        return service.EXIT_CONFIG
    log.info("crops of %dx%d pixels, the input of %s", face_size, face_size, model)
    with service.starting("detect"):
        detect = Detect(cfg.detect, face_size)
    cameras = cfg.detect.cameras or cfg.cameras
    metrics = metrics_mod.create(CollectorRegistry(), "detect", cameras)
    with service.starting("detect"):
        metrics_mod.serve(metrics, cfg.detect.metrics_port, cfg.pipeline.metrics_host, pooled=True)
    handler = make_handler(detect, metrics)
    return relay.serve(
        "detect",
        cfg,
        (cfg.endpoints.frames, "frame"),
        Frame,
        handler,
        metrics,
        stop,
        cfg.detect.threads,
    )
