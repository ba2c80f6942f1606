"""training.average: weight averaging and batch-norm recalibration, on small real models."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from helpers import shipped_keras_model
from services.classify.model import PREPROCESSING
from training.average import accuracy, average_weights, recalibrate_batch_norm
from training.data import DEFAULT_DATA, load_folder
from training.models import vgg

STAGES = ((4, 1), (8, 1))


def _model(seed: int, stages: tuple[tuple[int, int], ...] = STAGES) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = vgg(stages, head=8)
    for layer in model.layers:  # make the BN statistics differ between models too
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.random.default_rng(seed).normal(size=layer.moving_mean.shape))
    return model


def test_average_is_the_elementwise_mean_of_every_weight() -> None:
    a, b, c = _model(1), _model(2), _model(3)
    expected = [(x + y + z) / 3 for x, y, z in zip(a.get_weights(), b.get_weights(), c.get_weights(), strict=True)]
    averaged = average_weights([a, b, c])
    assert len(expected) == len(averaged.weights) > 10
    for got, want in zip(averaged.get_weights(), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_different_architectures_are_refused() -> None:
    with pytest.raises(ValueError, match="does not have the architecture"):
        average_weights([_model(1), _model(2, ((4, 1), (16, 1)))])


def test_recalibration_sets_moving_statistics_to_the_mean_of_batch_statistics() -> None:
    model = _model(4)
    images = np.random.default_rng(5).integers(0, 256, (300, 48, 48)).astype(np.uint8)
    first_norm = next(la for la in model.layers if isinstance(la, keras.layers.BatchNormalization))
    conv_out = keras.Model(model.input, first_norm.input)
    batches = [conv_out(images[i : i + 100, ..., None].astype("float32")).numpy() for i in (0, 100, 200)]
    want_mean = np.mean([x.mean(axis=(0, 1, 2)) for x in batches], axis=0)
    want_var = np.mean([x.var(axis=(0, 1, 2)) for x in batches], axis=0)
    momentum = first_norm.momentum

    assert recalibrate_batch_norm(model, images, batch_size=100) == 3

    np.testing.assert_allclose(first_norm.moving_mean.numpy(), want_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(first_norm.moving_variance.numpy(), want_var, rtol=1e-3, atol=1e-5)
    assert first_norm.momentum == momentum


def test_recalibration_needs_a_full_batch() -> None:
    with pytest.raises(ValueError, match="at least 256 images"):
        recalibrate_batch_norm(_model(6), np.zeros((10, 48, 48), np.uint8))


@pytest.mark.skipif(not (DEFAULT_DATA / "test").is_dir(), reason=f"FER-2013 not found at {DEFAULT_DATA}")
def test_accuracy_of_the_shipped_weights_is_the_model_cards() -> None:
    """One pass and flip-averaged, on all of PublicTest (equalised, as the weights were trained):
    the card's 66.87% (2,400 of 3,589 faces) and 67.82% (2,434) for the float model, give or
    take one face whose top two classes are within rounding of each other on another CPU."""
    images, labels = load_folder(DEFAULT_DATA / "test")
    single, flipped = accuracy(shipped_keras_model(), PREPROCESSING["equalize_hist"](images), labels)
    assert abs(single * len(labels) - 2400) <= 1
    assert abs(flipped * len(labels) - 2434) <= 1
