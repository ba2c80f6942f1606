"""The shipped model reproduces the PublicTest numbers its metadata and model card state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emopipe.config import DEFAULT_MODEL
from emopipe.labels import EMOTIONS
from helpers import shipped_keras_model
from services.classify.model import EmotionModel
from training.data import DEFAULT_DATA, load_folder
from training.evaluate import Report, evaluate, predict
from training.flip import METADATA_VALUE as FLIP_METADATA
from training.quantize import METADATA_VALUE as INT8_METADATA
from training.quantize import calibration_faces

PUBLIC_TEST = DEFAULT_DATA / "test"
CARD = DEFAULT_MODEL.parent / "MODEL_CARD.md"
# A regression floor, not the goal: the shipped model's PublicTest accuracy rounded down.
# Raise it whenever a better model ships. The file of 2026-12-04 scored 69.07% here and 27% of
# real labelled clips; this one gives up 1.4 points of PublicTest for faces from other sources
# (tests/test_shipped_crossdomain.py; the floor on FER-2013 is 66%).
MIN_PUBLICTEST_ACCURACY = 0.677

if not PUBLIC_TEST.is_dir():
    pytest.skip(f"FER-2013 PublicTest not found at {PUBLIC_TEST}", allow_module_level=True)


@pytest.fixture(scope="module")
def model() -> EmotionModel:
    """The shipped file, read as the classify stage reads it (all cores, for speed)."""
    return EmotionModel(DEFAULT_MODEL, intra_op_threads=0)


@pytest.fixture(scope="module")
def public_test() -> tuple[np.ndarray, np.ndarray]:
    return load_folder(PUBLIC_TEST)


@pytest.fixture(scope="module")
def report(model: EmotionModel, public_test: tuple[np.ndarray, np.ndarray]) -> Report:
    return evaluate(model, *public_test, "PublicTest")


def test_shipped_model_does_not_regress_below_the_accuracy_floor_on_publictest(report: Report) -> None:
    assert report.faces == 3589
    assert report.accuracy >= MIN_PUBLICTEST_ACCURACY


def test_metadata_states_the_accuracy_the_model_actually_has(model: EmotionModel, report: Report) -> None:
    assert model.labels == EMOTIONS and model.input_size == 48
    meta = model.session.get_modelmeta().custom_metadata_map
    assert float(meta["publictest_accuracy"]) == pytest.approx(report.accuracy, abs=5e-5)


def test_model_card_quotes_the_reproduced_accuracy_and_recalls(report: Report) -> None:
    card = CARD.read_text()
    assert f"{report.accuracy:.2%}" in card
    for name in EMOTIONS:
        assert f"| {name} | {report.recall[name]:.1%} |" in card, name


def test_the_committed_weights_export_to_the_shipped_model(
    model: EmotionModel, public_test: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """The card's export command (flip averaging, int8 calibrated on 512 Training faces) run on
    training/checkpoints/emonet-slim.weights.h5 gives the shipped file's answers."""
    meta = model.session.get_modelmeta().custom_metadata_map
    assert meta["test_time_augmentation"] == FLIP_METADATA and meta["precision"] == INT8_METADATA
    pytest.importorskip("keras")  # the training extra: the checks above run without it
    from training.export import export

    assert model.preprocessing == "equalize_hist"  # trained on equalised faces, and served them
    export(
        shipped_keras_model(),
        tmp_path / "again.onnx",
        flip_average=True,
        int8_calibration=calibration_faces(DEFAULT_DATA),
        preprocessing=model.preprocessing,
    )
    again = EmotionModel(tmp_path / "again.onnx", intra_op_threads=0)
    assert again.labels == model.labels and again.input_size == model.input_size
    images, labels = public_test
    shipped, exported = predict(model, images), predict(again, images)
    assert (shipped.argmax(axis=1) == exported.argmax(axis=1)).mean() >= 0.999
    right = [int((probs.argmax(axis=1) == labels).sum()) for probs in (shipped, exported)]
    assert abs(right[0] - right[1]) <= 2, right
    # Float32 rounding differs by CPU: on an Intel Xeon with AVX-512 and AMX, TensorFlow's
    # batch-norm folding and the calibration ranges onnxruntime measures came out up to one ulp
    # away from those of the AMD EPYC host that made the file, which moves a few int8 roundings
    # across a half-step: 27 of the 25,123 probabilities moved, by at most 0.0048 (the AMD hosts
    # of earlier sessions stayed within 2e-3).
    np.testing.assert_allclose(exported, shipped, atol=1e-2)
