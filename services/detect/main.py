"""detect: find and track faces in every frame (Haar cascade or YuNet), publish their boxes, track ids and grey crops.

The crops are the size the emotion model takes: detect reads it from the model's metadata
(``classify.model``, the file classify serves), so no config repeats it. Faces are looked for
on a copy of a large frame shrunk to ``detect.max_side`` (shrink.py), but boxes are in frame
pixels and the crops are cut from the full-resolution frame.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import cv2
import numpy as np
from prometheus_client import CollectorRegistry

from emopipe import metrics as metrics_mod
from emopipe import service
from emopipe.config import DetectConfig, resolve_path
from emopipe.messages import Box, Faces, Frame, Message
from emopipe.metrics import Metrics
from emopipe.workpool import worker
from services.classify.model import ModelError, input_size
from services.detect.detector import FaceDetector, grey_crops
from services.detect.schedule import CameraDetector
from services.detect.shrink import shrunk_grey
from services.detect.tracker import TrackedFace
from services.detect.yunet import Point, YuNetCamera, YuNetDetector

log = logging.getLogger("emopipe.detect")


class Detect:
    """Per-camera face detection and tracking: ``detect.detector`` "haar" (scheduled, or with
    ``every_frame`` the paper's full scan) or "yunet" (YuNet on every frame, tracked; with
    ``every_frame``, untracked).

    Each camera has its own detector (neither an OpenCV cascade nor a YuNet net is safe to share
    between threads, and ``detect.threads`` runs cameras in parallel); the first is loaded at once,
    so a missing cascade or model stops the stage before it serves."""

    def __init__(self, cfg: DetectConfig, face_size: int) -> None:
        self.cfg = cfg
        self.face_size = face_size
        self.detectors: dict[str, FaceDetector] = {}
        self.lock = threading.Lock()  # two cameras' first frames may come at once
        self.cameras: dict[str, CameraDetector] = {}
        self.yunet: dict[str, YuNetCamera] = {}
        self.spare: FaceDetector | None = None
        self.spare_yunet: YuNetCamera | None = None
        self.spare_net: YuNetDetector | None = None  # the finder's (detect.finder = "yunet")
        if cfg.detector == "yunet":
            self.spare_yunet = YuNetCamera.create(cfg)
        else:
            self.spare = FaceDetector(cfg, face_size)
            if not cfg.every_frame:
                self.spare_net = self.finder_net()  # a missing model stops the stage here too
        self.seen: dict[str, int] = {}  # every_frame: a new id per box (no tracking)

    def detector(self, camera: str) -> FaceDetector:
        with self.lock:
            found = self.detectors.get(camera)
            if found is None:
                found, self.spare = self.spare or FaceDetector(self.cfg, self.face_size), None
                self.detectors[camera] = found
            return found

    def finder_net(self) -> YuNetDetector | None:
        """A YuNet of its own for a new camera's finder; None with ``detect.finder = "cascade"``."""
        if self.cfg.finder != "yunet":
            return None
        with self.lock:
            net, self.spare_net = self.spare_net or YuNetDetector(self.cfg.min_size, self.cfg.finder_score), None
            return net

    def yunet_camera(self, camera: str) -> YuNetCamera:
        with self.lock:
            found = self.yunet.get(camera)
            if found is None:
                found, self.spare_yunet = self.spare_yunet or YuNetCamera.create(self.cfg), None
                self.yunet[camera] = found
            return found

    def landmarks(self, camera: str) -> dict[int, tuple[Point, Point, Point, Point, Point]]:
        """With "yunet", the five landmarks (eyes, nose tip, mouth corners; frame pixels) of each face
        found in the camera's latest frame, by track id (for alignment); "haar" has none."""
        found = self.yunet.get(camera)
        return dict(found.landmarks) if found is not None else {}

    def __call__(self, frame: Frame) -> Faces:
        if self.cfg.detector == "yunet":
            return self._yunet(frame)
        detector = self.detector(frame.camera)
        if self.cfg.every_frame:  # the paper's way: the whole frame, shrunk by detect.downscale only
            gray = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
            height, width = gray.shape
            boxes = tuple(detector.find(gray, Box(0, 0, width, height), self.cfg.downscale, self.cfg.min_size))
            return self._untracked(frame, gray, boxes)
        camera = self.cameras.get(frame.camera)
        if camera is None:
            camera = self.cameras[frame.camera] = CameraDetector.create(self.cfg, detector, self.finder_net())
        copy = shrunk_grey(frame.image, self.cfg.max_side)
        # a frame detected whole is cropped from its grey copy; a shrunk one from the full frame
        source = copy.gray if copy.whole else frame.image
        return self._tracked(frame, source, camera.process(copy, frame.ts))

    def _yunet(self, frame: Frame) -> Faces:
        camera = self.yunet_camera(frame.camera)
        if not self.cfg.every_frame:
            return self._tracked(frame, frame.image, camera.process(frame.image, frame.ts))
        found = camera.detector.find(frame.image)
        faces = self._untracked(frame, frame.image, tuple(f.box for f in found))
        camera.landmarks = {t: f.landmarks for t, f in zip(faces.tracks, found, strict=True)}
        return faces

    def _tracked(self, frame: Frame, image: np.ndarray, faces: list[TrackedFace]) -> Faces:
        """``image``: the frame, grey or BGR, at full resolution (the crops are cut from it)."""
        boxes = tuple(f.box for f in faces)
        crops = grey_crops(image, boxes, self.face_size)
        return Faces(frame.camera, frame.seq, frame.ts, boxes, crops, tuple(f.track for f in faces), wall=frame.wall)

    def _untracked(self, frame: Frame, image: np.ndarray, boxes: tuple[Box, ...]) -> Faces:
        crops = grey_crops(image, boxes, self.face_size)
        first = self.seen.get(frame.camera, 0) + 1
        self.seen[frame.camera] = first + len(boxes) - 1
        tracks = tuple(range(first, first + len(boxes)))
        return Faces(frame.camera, frame.seq, frame.ts, boxes, crops, tracks, wall=frame.wall)


def make_handler(detect: Detect, metrics: Metrics) -> worker.Handler:
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
    return worker.serve("detect", cfg, handler, metrics, stop, cfg.detect.threads)
