"""The emotion CNNs, written in backend-agnostic Keras 3 (TensorFlow on a CPU, PyTorch on a GPU).

Every model takes raw grey pixels, float32 ``[N,S,S,1]`` in 0..255 with S the data set's
face size (``training.data.FACE_SIZE``, 48), and returns softmax probabilities ``[N,7]`` in
FER-2013 order. Scaling to [0,1] is the first layer, so the exported graph carries its own
normalisation and serving cannot get it wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
from keras import layers

from emopipe.labels import NUM_CLASSES
from training.data import FACE_SIZE


def _inputs() -> tuple[keras.KerasTensor, keras.KerasTensor]:
    raw = keras.Input((FACE_SIZE, FACE_SIZE, 1), name="pixels")
    return raw, layers.Rescaling(1.0 / 255.0, name="scale_0_1")(raw)


def paper() -> keras.Model:
    """The paper's network, the baseline: 4 conv layers 32-64-128-256, each with max-pooling
    and dropout 0.3, dense 512 and 256 with dropout 0.4, softmax over 7 (about 34 M
    multiply-adds a face)."""
    raw, x = _inputs()
    for filters in (32, 64, 128, 256):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(0.3)(x)
    x = layers.Flatten()(x)
    for units in (512, 256):
        x = layers.Dense(units, activation="relu")(x)
        x = layers.Dropout(0.4)(x)
    probs = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return keras.Model(raw, probs, name="paper")


def _bn_relu(x: keras.KerasTensor) -> keras.KerasTensor:
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def _conv_bn(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    return _bn_relu(layers.Conv2D(filters, 3, padding="same", use_bias=False)(x))


def vgg(stages: tuple[tuple[int, int], ...], head: int = 256, dropout: float = 0.4, name: str = "vgg") -> keras.Model:
    """A VGG-style net with batch norm: ``stages`` is ``((filters, convs), ...)``, each stage
    ending in 2x2 max-pooling; global average pooling, one dense layer, softmax."""
    raw, x = _inputs()
    for filters, convs in stages:
        for _ in range(convs):
            x = _conv_bn(x, filters)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    x = _bn_relu(layers.Dense(head, use_bias=False)(x))
    x = layers.Dropout(dropout)(x)
    probs = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return keras.Model(raw, probs, name=name)


def emonet_slim() -> keras.Model:
    """The shipped network: stages of 24, 48, 2x80 and 2x160 filters (32 M multiply-adds, well
    over 1,000 faces/s on one CPU core), trained alone (``emonet-slim-long``) and then distilled
    from ``emonet-wide`` (``emonet-slim-kd``)."""
    return vgg(((24, 1), (48, 1), (80, 2), (160, 2)), name="emonet-slim")


def emonet_wide() -> keras.Model:
    """The teacher, 13x the shipped network's multiply-adds (421 M): two convolutions in every
    stage, 64-128-256-384 filters, a dense layer of 512. Far too slow for the classify stage's
    budget; it exists to be distilled into ``emonet-slim``."""
    return vgg(((64, 2), (128, 2), (256, 2), (384, 2)), head=512, name="emonet-wide")


ARCHITECTURES: dict[str, Callable[[], keras.Model]] = {
    "paper": paper,
    "emonet-slim": emonet_slim,
    "emonet-wide": emonet_wide,
}


def build(name: str) -> keras.Model:
    try:
        return ARCHITECTURES[name]()
    except KeyError:
        raise ValueError(f"unknown architecture {name!r} (choose from {', '.join(ARCHITECTURES)})") from None


# A checkpoint names its optimizer's class by module, and the PyTorch backend's optimizers live
# in a module of their own (keras.src.backend.torch.optimizers), which TensorFlow cannot import.
# Naming the portable classes here lets a run trained on a GPU with KERAS_BACKEND=torch be
# resumed, averaged and exported under TensorFlow, and the other way round.
_PORTABLE_OPTIMIZERS = {"Adam": keras.optimizers.Adam, "AdamW": keras.optimizers.AdamW}


def load_checkpoint(path: Path) -> keras.Model:
    """A ``.keras`` checkpoint (model and optimizer state), saved under any Keras backend."""
    return keras.models.load_model(path, custom_objects=_PORTABLE_OPTIMIZERS)


def as_float32(model: keras.Model) -> keras.Model:
    """``model`` computing in float32 (a copy) if any layer keeps float16: a CPU runs float16
    convolutions many times slower (the committed teacher is stored in float16)."""
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model.layers):
        return model
    config = model.get_config()
    for layer in config["layers"]:
        layer["config"]["dtype"] = "float32"
    copy = keras.Model.from_config(config)
    copy.set_weights([np.asarray(w, dtype=np.float32) for w in model.get_weights()])
    return copy


def multiply_adds(model: keras.Model) -> int:
    """Multiply-adds of one forward pass (conv and dense layers), for the model card."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c_out * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)
