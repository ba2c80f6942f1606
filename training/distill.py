"""Knowledge distillation: a trained model's predictions as part of the training targets.

The teacher is an exported ONNX model, run by onnxruntime on the CPU (for the shipped model:
``emonet``, exported from ``runs/emonet-refine-30/averaged.keras``), or a ``.keras``
checkpoint, run by the training backend itself (on a GPU machine, a teacher too large for the
CPU to keep up with). It sees exactly the augmented batch the student
sees, and its probabilities are averaged with those for the mirrored batch, so the student
learns the teacher's flip-averaged answer (worth +1.4 points on PublicTest for ``emonet``)
at the cost of one forward pass, not two:

    emopipe-train --recipe emonet-slim-distill --teacher runs/emonet-teacher.onnx \\
        --init runs/emonet-slim/averaged.keras --out runs/emonet-slim-distill

Given several teachers (``--teacher`` repeated), the student learns the mean of their
flip-averaged probabilities: an ensemble of independently trained networks answers better than
any one of them, and teaches better.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort

from emopipe.labels import EMOTIONS, NUM_CLASSES
from training.evaluate import model_labels, predict
from training.models import load_checkpoint

# How a .keras teacher runs: given the loaded model, a function from raw uint8 [N,48,48] faces
# to [N,7] probabilities (by default Keras itself; training.torch_train converts it to PyTorch).
KerasRunner = Callable[[keras.Model], Callable[[np.ndarray], np.ndarray]]


class Teacher:
    """Flip-averaged class probabilities of an exported (.onnx) or a Keras (.keras) emotion model."""

    def __init__(self, path: Path, runner: KerasRunner | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"teacher model {path} not found")
        if path.suffix == ".keras":
            model = load_checkpoint(path)
            if model.output_shape != (None, NUM_CLASSES):
                raise ValueError(f"teacher model {path} has output shape {model.output_shape}, not (None, 7)")
            self._predict = (runner or _keras_runner)(model)
            return
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        labels = model_labels(session)
        if labels != list(EMOTIONS):
            raise ValueError(f"teacher model {path} has labels {labels}, not FER-2013's {list(EMOTIONS)}")
        self._predict = lambda images: predict(session, images)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """``[N,7]`` probabilities for raw 0..255 ``[N,48,48]`` faces, averaged over each face
        and its mirror image."""
        both = self._predict(np.concatenate([images, images[:, :, ::-1]]))
        return (both[: len(images)] + both[len(images) :]) / 2


class Teachers:
    """Several teachers as one: the mean of their flip-averaged probabilities."""

    def __init__(self, paths: Sequence[Path], runner: KerasRunner | None = None) -> None:
        if not paths:
            raise ValueError("no teacher models given")
        self.members = [Teacher(path, runner) for path in paths]

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
