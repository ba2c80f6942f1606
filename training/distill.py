"""Knowledge distillation: a trained model's predictions as part of the training targets.

The teacher is an exported ONNX model (for the shipped model: ``emonet``, exported from
``runs/emonet-refine-30/averaged.keras``). It sees exactly the augmented batch the student
sees, and its probabilities are averaged with those for the mirrored batch, so the student
learns the teacher's flip-averaged answer (worth +1.4 points on PublicTest for ``emonet``)
at the cost of one forward pass, not two:

    emopipe-train --recipe emonet-slim-distill --teacher runs/emonet-teacher.onnx \\
        --init runs/emonet-slim/averaged.keras --out runs/emonet-slim-distill
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from emopipe.labels import EMOTIONS, NUM_CLASSES
from training.evaluate import model_labels, predict


class Teacher:
    """Flip-averaged class probabilities of an exported emotion model."""

    def __init__(self, path: Path) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"teacher model {path} not found")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        labels = model_labels(self.session)
        if labels != list(EMOTIONS):
            raise ValueError(f"teacher model {path} has labels {labels}, not FER-2013's {list(EMOTIONS)}")

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """``[N,7]`` probabilities for raw 0..255 ``[N,48,48]`` faces, averaged over each face
        and its mirror image."""
        both = predict(self.session, np.concatenate([images, images[:, :, ::-1]]))
        return (both[: len(images)] + both[len(images) :]) / 2


def soft_targets(labels: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * one_hot(labels) + weight * teacher``: rows still sum to 1."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"teacher weight {weight} is outside [0, 1]")
    if teacher.shape != (len(labels), NUM_CLASSES):
        raise ValueError(f"teacher probabilities have shape {teacher.shape}, expected ({len(labels)}, {NUM_CLASSES})")
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    return ((1.0 - weight) * onehot + weight * teacher).astype(np.float32)
