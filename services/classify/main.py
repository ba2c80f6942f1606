"""classify: one batched model call per frame's faces; publish label, confidence and probabilities."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
from prometheus_client import CollectorRegistry

from emopipe import metrics as metrics_mod
from emopipe import service
from emopipe.config import resolve_path
from emopipe.messages import FaceResult, Faces, Message, Results
from emopipe.metrics import Metrics
from emopipe.workpool import worker
from services.classify.model import EmotionModel, ModelError

log = logging.getLogger("emopipe.classify")


def classify(model: EmotionModel, faces: Faces) -> Results:
    probs = model.predict(fit(model, faces))
    best = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, dtype=int)
    results = tuple(
        FaceResult(
            box=box,
            emotion=model.labels[int(k)],
            confidence=float(row[k]),
            probabilities=tuple(float(p) for p in row),
            track=track,
        )
        for box, track, row, k in zip(faces.boxes, faces.tracks or [0] * len(faces.boxes), probs, best, strict=False)
    )
    return Results(camera=faces.camera, seq=faces.seq, ts=faces.ts, faces=results, labels=model.labels, wall=faces.wall)


_warned_sizes: set[tuple[int, ...]] = set()


def fit(model: EmotionModel, faces: Faces) -> np.ndarray:
    """The crops at the model's input size. Detect cuts them at that size (it reads the same
    model's metadata); crops of another size come from a detect configured with another model
    file, and are resized, with one warning per size naming both."""
    crops = faces.crops
    size = model.input_size
    if crops.shape[1:] == (size, size):
        return crops
    if crops.shape[1:] not in _warned_sizes:
        _warned_sizes.add(crops.shape[1:])
        log.warning(
            "camera %s: detect sends %dx%d crops but model %s takes %dx%d: resizing them "
            "(give detect the same classify.model)",
            faces.camera,
            crops.shape[1],
            crops.shape[2],
            model.path,
            size,
            size,
        )
    resized = np.zeros((len(crops), size, size), np.uint8)
    for i, crop in enumerate(crops):
        resized[i] = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return resized


def make_handler(model: EmotionModel, metrics: Metrics) -> worker.Handler:
    def handle(msg: Message) -> Results:
        assert isinstance(msg, Faces)
        return classify(model, msg)  # the sink counts the predictions, by each track's smoothed label

    return handle


def main(argv: Sequence[str] | None = None) -> int:
    cfg, stop = service.setup("classify", argv)
    try:
        model = EmotionModel(resolve_path(cfg.classify.model), cfg.classify.intra_op_threads)
    except ModelError as exc:
        log.error("%s", exc)
        return service.EXIT_CONFIG
    log.info("model %s: labels %s, input %d, sha256 %s", model.path, model.labels, model.input_size, model.sha256[:12])
    cameras = cfg.classify.cameras or cfg.cameras
    metrics = metrics_mod.create(CollectorRegistry(), "classify", cameras)
    assert metrics.model_info is not None  # created for the classify stage
    metrics.model_info.info(model.info())
    with service.starting("classify"):
        metrics_mod.serve(metrics, cfg.classify.metrics_port, cfg.pipeline.metrics_host, pooled=True)
    handler = make_handler(model, metrics)
    return worker.serve("classify", cfg, handler, metrics, stop)
