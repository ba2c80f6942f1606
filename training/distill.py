"""Knowledge distillation: a trained model's predictions as part of the training targets.

The teacher is a ``.keras`` checkpoint, run by the training backend itself (the shipped
model's teacher, ``emonet-wide``, committed as ``training/checkpoints/emonet-wide-fp16.keras``:
on a GPU it keeps up with the student), or an exported ONNX model, run by onnxruntime on
the CPU (read as serving reads it, ``services.classify.model.EmotionModel``). It sees
exactly the augmented batch the student sees, and its probabilities are averaged with
those for the mirrored batch (``training.flip.flip_averaged``), so the student learns the
teacher's flip-averaged answer at the cost of one forward pass, not two:

    emopipe-train --recipe emonet-slim-kd --teacher training/checkpoints/emonet-wide-fp16.keras \\
        --init training/checkpoints/emonet-slim.weights.h5 --epochs 10 --snapshots-from 6

Given several teachers (``--teacher`` repeated), the student learns the mean of their
flip-averaged probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from emopipe.labels import EMOTIONS, NUM_CLASSES
from services.classify.model import EmotionModel
from training.flip import flip_averaged
from training.models import as_float32, load_checkpoint


class Teacher:
    """Flip-averaged class probabilities of an exported (.onnx) or a Keras (.keras) emotion model."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"teacher model {path} not found")
        self._predict: Callable[[np.ndarray], np.ndarray]
        if path.suffix == ".keras":
            model = as_float32(load_checkpoint(path))
            if model.output_shape != (None, NUM_CLASSES):
                raise ValueError(f"teacher model {path} has output shape {model.output_shape}, not (None, 7)")
            self._predict = _keras_runner(model)
            return
        exported = EmotionModel(path, intra_op_threads=0)
        if exported.labels != EMOTIONS:
            labels = list(exported.labels)
            raise ValueError(f"teacher model {path} has labels {labels}, not FER-2013's {list(EMOTIONS)}")
        self._predict = exported.predict

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """``[N,7]`` probabilities for raw 0..255 uint8 ``[N,S,S]`` faces, averaged over each
        face and its mirror image."""
        return flip_averaged(self._predict, images)[1]


class Teachers:
    """Several teachers as one: the mean of their flip-averaged probabilities."""

    def __init__(self, paths: Sequence[Path]) -> None:
        if not paths:
            raise ValueError("no teacher models given")
        self.members = [Teacher(path) for path in paths]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """``[N,7]``: each member's :meth:`Teacher.probabilities`, averaged."""
        stacked = np.stack([member.probabilities(images) for member in self.members])
        return stacked.mean(axis=0, dtype=np.float32)


def _keras_runner(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    def run(images: np.ndarray) -> np.ndarray:
        pixels = images[..., None].astype("float32")
        return np.asarray(keras.ops.convert_to_numpy(model(pixels, training=False)), np.float32)

    return run


def soft_targets(labels: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * one_hot(labels) + weight * teacher``: rows still sum to 1."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"teacher weight {weight} is outside [0, 1]")
    if teacher.shape != (len(labels), NUM_CLASSES):
        raise ValueError(f"teacher probabilities have shape {teacher.shape}, expected ({len(labels)}, {NUM_CLASSES})")
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    return ((1.0 - weight) * onehot + weight * teacher).astype(np.float32)
