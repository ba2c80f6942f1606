"""training.ensemble: several models' probabilities averaged, one pass and flip-averaged."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from training.ensemble import Scores, ensemble, probabilities, score  # noqa: E402
from training.models import vgg  # noqa: E402


def _faces(count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, 48, 48), dtype=np.uint8), rng.integers(0, 7, count)


def _constant(favoured: int, strength: float) -> keras.Model:
    """A model whose answer ignores the face: softmax of a bias that favours one class."""
    bias = np.zeros(7, np.float32)
    bias[favoured] = strength
    model = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(7)])
    model.layers[-1].set_weights([np.zeros((48 * 48, 7), np.float32), bias])
    return keras.Sequential([model, keras.layers.Softmax()])


def test_score_counts_faces_right_one_pass_and_flipped() -> None:
    labels = np.array([0, 1, 2])
    plain = np.eye(7)[[0, 1, 0]]
    flipped = np.eye(7)[[0, 0, 0]]
    assert score(plain, flipped, labels) == Scores(one_pass=2, flipped=1, faces=3)
    assert Scores(2, 1, 3).line("m") == "m: 66.67% one pass (2 of 3), 33.33% flip-averaged (1)"


def test_flip_averaged_probabilities_are_the_mean_of_face_and_mirror() -> None:
    keras.utils.set_random_seed(3)
    model = vgg(((4, 1), (8, 1)), head=8)
    images, _ = _faces(6)
    plain, flipped = probabilities(model, images)
    mirrored = model.predict(images[:, :, ::-1, None].astype("float32"), verbose=0)
    np.testing.assert_allclose(flipped, (plain + mirrored) / 2, atol=1e-6)
    assert not np.allclose(plain, mirrored, atol=1e-4)  # the net is not mirror-symmetric


def test_the_ensemble_answers_with_the_mean_of_its_members() -> None:
    """Two models that always answer happy (bias 2) and sad (bias 1): the mean of their
    probabilities favours the stronger one, so the ensemble gets the happy faces right."""
    images, labels = _faces(50)
    labels[:20], labels[20:35] = 3, 4  # 20 happy, 15 sad, 15 angry
    labels[35:] = 0
    members, together = ensemble([_constant(3, 2.0), _constant(4, 1.0)], images, labels)
    assert members == [Scores(20, 20, 50), Scores(15, 15, 50)]
    assert together == Scores(20, 20, 50)
    members, together = ensemble([_constant(3, 1.0), _constant(4, 2.0)], images, labels)
    assert together == Scores(15, 15, 50)


def test_an_ensemble_of_one_model_twice_is_that_model() -> None:
    keras.utils.set_random_seed(5)
    model = vgg(((4, 1), (8, 1)), head=8)
    images, labels = _faces(40)
    (alone,), _ = ensemble([model], images, labels)
    _, twice = ensemble([model, model], images, labels)
    assert twice == alone


def test_no_models_is_refused() -> None:
    with pytest.raises(ValueError, match="no models"):
        ensemble([], *_faces(2))
