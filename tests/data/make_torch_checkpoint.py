"""Writes ``torch-adamw.keras`` and ``torch-adamw.npz`` for tests/test_training_checkpoints.py:
a tiny emotion CNN trained one AdamW step under the PyTorch backend, with its predictions.

    KERAS_BACKEND=torch python tests/data/make_torch_checkpoint.py

It needs PyTorch and Keras (not TensorFlow); the test reads the files under TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from training.models import vgg

HERE = Path(__file__).resolve().parent


def faces(count: int = 8) -> np.ndarray:
    """Fixed pseudo-random 0..255 faces, the same on every machine."""
    return np.random.default_rng(7).integers(0, 256, (count, 48, 48, 1)).astype("float32")


def main() -> None:
    assert keras.backend.backend() == "torch", "run with KERAS_BACKEND=torch"
    keras.utils.set_random_seed(3)
    model = vgg(((4, 1), (8, 1)), head=8, name="tiny")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.01), loss="categorical_crossentropy")
    x = faces()
    y = keras.utils.to_categorical(np.arange(len(x)) % 7, 7)
    model.train_on_batch(x, y)
    model.save(HERE / "torch-adamw.keras")
    predictions = keras.ops.convert_to_numpy(model(x, training=False))
    np.savez(HERE / "torch-adamw.npz", faces=x.astype(np.uint8), targets=y, predictions=predictions)


if __name__ == "__main__":
    main()
