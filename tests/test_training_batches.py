"""training.train.FaceBatches: reproducible batches, and a resumed run does not replay old ones."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from training.augment import Augmentation, Camera, augment_batch, camera_effects
from training.train import FaceBatches, class_weights

AUG = Augmentation(rotation_deg=10, shift=0.1, zoom=0.1, flip=True, erase_prob=0.5)


def _split() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 48, 48)).astype(np.uint8), rng.integers(0, 7, 40)


def _epoch(batches: FaceBatches) -> np.ndarray:
    return np.concatenate([batches[i][0] for i in range(len(batches))])


def test_a_fresh_run_draws_the_same_batches_every_time() -> None:
    first, second = FaceBatches(_split(), 16, AUG, seed=1), FaceBatches(_split(), 16, AUG, seed=1)
    assert len(first) == 3
    np.testing.assert_array_equal(_epoch(first), _epoch(second))
    images, onehot = FaceBatches(_split(), 16, AUG, seed=1)[2]
    assert images.shape == (8, 48, 48, 1) and images.dtype == np.float32 and onehot.shape == (8, 7)


def test_a_resumed_run_draws_new_orders_and_augmentations() -> None:
    fresh = FaceBatches(_split(), 16, AUG, seed=1)
    resumed = FaceBatches(_split(), 16, AUG, seed=1, first_epoch=5)
    assert not np.array_equal(fresh.order, resumed.order)
    assert not np.array_equal(_epoch(fresh), _epoch(resumed))
    again = FaceBatches(_split(), 16, AUG, seed=1, first_epoch=5)
    np.testing.assert_array_equal(_epoch(again), _epoch(FaceBatches(_split(), 16, AUG, seed=1, first_epoch=5)))


def test_class_weights_favour_rare_classes_and_average_one_over_the_faces() -> None:
    labels = np.array([3] * 64 + [1] * 4 + [6] * 16)  # happy 64, disgust 4, neutral 16
    labels = np.concatenate([labels, np.arange(7)])  # every class at least once
    weights = class_weights(labels, 0.5)
    assert weights is not None and weights.shape == (7,)
    counts = np.bincount(labels, minlength=7)
    assert weights[1] / weights[3] == pytest.approx(np.sqrt(counts[3] / counts[1]), rel=1e-5)
    assert weights[labels].mean() == pytest.approx(1.0, rel=1e-5)
    assert class_weights(labels, 0.0) is None
    with pytest.raises(ValueError, match="disgust"):
        class_weights(np.array([0, 2, 3, 4, 5, 6]), 0.5)


def test_batches_carry_clean_teacher_targets_sample_weights_and_the_preprocessing() -> None:
    images, labels = _split()
    teacher = np.full((len(labels), 7), 1 / 7, np.float32)
    weights = np.arange(1, 8, dtype=np.float32)
    batches = FaceBatches(
        (images, labels),
        16,
        AUG,
        seed=1,
        teacher_weight=0.5,
        clean_targets=teacher,
        class_weights=weights,
        preprocessing="equalize_hist",
    )
    x, y, w = batches[0]
    picked = batches.order[:16]
    expected = 0.5 * np.eye(7)[labels[picked]] + 0.5 / 7
    np.testing.assert_allclose(y, expected, atol=1e-6)
    np.testing.assert_array_equal(w, weights[labels[picked]])
    for face in x[..., 0].astype(np.uint8):  # equalised: every face spans black to white
        assert face.min() <= 8 and face.max() >= 247


def test_camera_effects_change_light_blur_and_compression_but_keep_the_face_shape() -> None:
    rng = np.random.default_rng(3)
    face = cv2.resize(rng.integers(0, 256, (12, 12)).astype(np.uint8), (48, 48), interpolation=cv2.INTER_CUBIC)
    cam = Camera(prob=1.0, blur_prob=1.0, downscale_prob=1.0, jpeg_prob=1.0, noise_prob=1.0)
    outs = [camera_effects(face, rng, cam) for _ in range(20)]
    assert all(o.shape == face.shape and o.dtype == np.uint8 for o in outs)
    means = [float(o.mean()) for o in outs]
    assert max(means) - min(means) > 20  # brightness, contrast and gamma vary
    for o in outs:  # still the same picture: correlated with the original
        assert np.corrcoef(o.ravel().astype(float), face.ravel().astype(float))[0, 1] > 0.5
    off = augment_batch(face[None], np.random.default_rng(0), Augmentation(rotation_deg=0, shift=0, zoom=0))
    np.testing.assert_array_equal(off[0], face)  # prob 0 (the default): no camera effect at all
