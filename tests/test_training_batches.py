"""training.train.FaceBatches: reproducible batches, and a resumed run does not replay old ones."""

from __future__ import annotations

import numpy as np

from training.augment import Augmentation
from training.train import FaceBatches

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
