"""training.prune: narrowing a trained VGG-style net, on small real models."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.models import vgg
from training.prune import prune_into

WIDE = ((8, 1), (12, 2))
NARROW = ((5, 1), (7, 2))


def _wide(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = vgg(WIDE, head=6)
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # trained-looking statistics, not the initial zeros and ones
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape
            layer.gamma.assign(rng.uniform(0.5, 2.0, size))
            layer.beta.assign(rng.normal(0, 0.5, size))
            layer.moving_mean.assign(rng.normal(0, 1, size))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size))
    return model


def _silence(norm: keras.layers.Layer, channels: list[int]) -> None:
    """Zero the scale and shift of ``channels``: after the ReLU they are exactly 0."""
    gamma, beta = norm.gamma.numpy(), norm.beta.numpy()
    gamma[channels], beta[channels] = 0.0, 0.0
    norm.gamma.assign(gamma)
    norm.beta.assign(beta)


def test_pruning_silent_channels_leaves_every_output_unchanged() -> None:
    model = _wide(1)
    norms = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    # Conv widths 8, 12, 12 become 5, 7, 7: silence 3, 5 and 5 channels, scattered.
    for norm, channels in zip(norms, ([0, 3, 6], [1, 2, 5, 8, 11], [0, 4, 5, 9, 10]), strict=False):
        _silence(norm, channels)
    images = np.random.default_rng(2).integers(0, 256, (16, 48, 48, 1)).astype("float32")
    want = model.predict(images, verbose=0)

    pruned = prune_into(model, vgg(NARROW, head=6))

    assert pruned.count_params() < model.count_params()
    np.testing.assert_allclose(pruned.predict(images, verbose=0), want, rtol=1e-5, atol=1e-6)


def test_kept_channels_are_the_largest_gammas_in_their_order() -> None:
    model = _wide(3)
    first_conv = next(la for la in model.layers if isinstance(la, keras.layers.Conv2D))
    first_norm = next(la for la in model.layers if isinstance(la, keras.layers.BatchNormalization))
    first_norm.gamma.assign([0.1, -3.0, 0.2, 2.0, 0.3, -1.5, 0.05, 1.0])  # |gamma| ranks 1, 3, 5, 7, 4
    kept = [1, 3, 4, 5, 7]

    pruned = prune_into(model, vgg(NARROW, head=6))

    new_conv = next(la for la in pruned.layers if isinstance(la, keras.layers.Conv2D))
    new_norm = next(la for la in pruned.layers if isinstance(la, keras.layers.BatchNormalization))
    np.testing.assert_array_equal(new_conv.kernel.numpy(), first_conv.kernel.numpy()[..., kept])
    np.testing.assert_array_equal(new_norm.gamma.numpy(), first_norm.gamma.numpy()[kept])
    np.testing.assert_array_equal(new_norm.moving_variance.numpy(), first_norm.moving_variance.numpy()[kept])


def test_a_wider_target_is_refused() -> None:
    with pytest.raises(ValueError, match="more than the"):
        prune_into(vgg(NARROW, head=6), vgg(WIDE, head=6))


def test_a_different_layer_sequence_is_refused() -> None:
    with pytest.raises(ValueError, match="does not have the layers"):
        prune_into(_wide(4), vgg(((5, 1), (7, 1)), head=6))


def _plain(width: int) -> keras.Model:
    """A convolution without batch norm, like the paper net's."""
    pixels = keras.Input((48, 48, 1))
    x = keras.layers.Conv2D(width, 3, activation="relu")(pixels)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(pixels, keras.layers.Dense(7)(x))


def test_convolutions_without_batch_norm_cannot_be_ranked() -> None:
    with pytest.raises(ValueError, match="not followed by a batch norm"):
        prune_into(_plain(8), _plain(4))
