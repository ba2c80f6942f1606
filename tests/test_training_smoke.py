"""Train for real on 256 FER-2013 faces through ``emopipe-train``, resume, export, and check
ONNX/Keras parity.

Needs the ``train`` extra (TensorFlow/Keras, onnx) and ../shared/fer2013; CI has both.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
import keras  # noqa: E402

from emopipe.labels import EMOTIONS  # noqa: E402
from helpers import SHIPPED_WEIGHTS, shipped_keras_model  # noqa: E402
from services.classify.model import EmotionModel  # noqa: E402
from training.data import DEFAULT_DATA, load_folder  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.export import export  # noqa: E402
from training.models import ARCHITECTURES, build  # noqa: E402
from training.recipes import recipe  # noqa: E402
from training.train import _model, main  # noqa: E402

pytestmark = pytest.mark.slow

if not (DEFAULT_DATA / "train").is_dir():
    pytest.skip(f"FER-2013 not found at {DEFAULT_DATA}", allow_module_level=True)


@pytest.fixture(scope="module")
def public_test() -> tuple[np.ndarray, np.ndarray]:
    """The real PublicTest faces and labels, read once for the module."""
    return load_folder(DEFAULT_DATA / "test")


def _sample(images: np.ndarray, count: int) -> np.ndarray:
    """``count`` real faces as serving feeds them: raw 0..255, float32 [N,48,48,1]."""
    return images[np.random.default_rng(0).choice(len(images), count, replace=False)][..., None].astype("float32")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A further ``emonet-slim-kd`` cycle as the shipped model's cycles were run: from the
    committed weights (``--init``), taught by two teachers (those weights exported to ONNX,
    and saved as ``.keras``), seeded 7. Two epochs on 256 faces (4 whole batches: TF traces
    one train step, not a second for a short last batch), interrupted after the first and
    resumed by the same command."""
    folder = tmp_path_factory.mktemp("run")
    teacher = shipped_keras_model()
    export(teacher, folder / "teacher.onnx")
    teacher.save(folder / "teacher.keras")
    out = folder / "run"
    command = ["--recipe", "emonet-slim-kd", "--data", str(DEFAULT_DATA), "--cache", str(folder / "cache")]
    command += ["--out", str(out), "--epochs", "2", "--batch-size", "64", "--limit", "256", "--seed", "7"]
    command += ["--init", str(SHIPPED_WEIGHTS), "--teacher", str(folder / "teacher.onnx")]
    command += ["--teacher", str(folder / "teacher.keras")]
    assert main([*command, "--stop-after", "1"]) == 0
    with (out / "history.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["0"]
    assert main([*command, "--snapshots-from", "2"]) == 0
    return out


def test_interrupted_run_resumes_at_next_epoch_with_all_artifacts(run: Path) -> None:
    with (run / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert all(0.0 <= float(row["val_accuracy"]) <= 1.0 for row in rows)
    for name in ("last.keras", "best.keras", "recipe.json", "curves.png"):
        assert (run / name).stat().st_size > 0, name
    saved = json.loads((run / "recipe.json").read_text())
    assert (saved["architecture"], saved["seed"], saved["epochs"]) == ("emonet-slim", 7, 2)
    assert saved["teacher_weight"] == 0.7
    assert sorted(p.name for p in (run / "epochs").iterdir()) == ["epoch-02.keras"]
    # From the committed weights (a warm-up epoch of 4 steps barely moves them), not from
    # scratch (about 1 in 7): on 256 PublicTest faces the student starts near the shipped 68%.
    assert float(rows[0]["val_accuracy"]) > 0.5


def _exported_matches_keras(model: keras.Model, path: Path, faces: np.ndarray) -> np.ndarray:
    """Exports ``model`` to ``path``, asserts onnxruntime and Keras agree to 1e-4 on ``faces``
    and returns onnxruntime's probabilities."""
    export(model, path)
    onnx_probs = EmotionModel(path).predict(faces[..., 0].astype(np.uint8))
    keras_probs = keras.ops.convert_to_numpy(model(faces, training=False))
    assert onnx_probs.shape == (len(faces), 7)
    np.testing.assert_allclose(onnx_probs, keras_probs, atol=1e-4)
    return onnx_probs


def test_exported_onnx_matches_keras_on_real_faces(
    run: Path, tmp_path: Path, public_test: tuple[np.ndarray, np.ndarray]
) -> None:
    model = keras.models.load_model(run / "best.keras")
    onnx_probs = _exported_matches_keras(model, tmp_path / "emotion.onnx", _sample(public_test[0], 64))
    np.testing.assert_allclose(onnx_probs.sum(axis=1), 1.0, atol=1e-4)


def test_onnx_contract_dynamic_batch_and_self_description(run: Path, tmp_path: Path) -> None:
    """The exported file is what serving reads: labels, and the input size the Keras model
    was built with (FER-2013's 48), from its metadata."""
    path = tmp_path / "emotion.onnx"
    export(keras.models.load_model(run / "best.keras"), path, {"recipe": "emonet-slim-long"})
    model = EmotionModel(path)
    (inp,), (out,) = model.session.get_inputs(), model.session.get_outputs()
    assert inp.type == "tensor(float)" and inp.shape[1:] == [48, 48, 1] and isinstance(inp.shape[0], str)
    assert out.shape[1:] == [7]
    assert model.labels == EMOTIONS and model.input_size == 48
    assert model.session.get_modelmeta().custom_metadata_map["recipe"] == "emonet-slim-long"
    for batch in (1, 5):
        assert model.predict(np.full((batch, 48, 48), 128, np.uint8)).shape == (batch, 7)


def test_the_metadata_input_size_is_the_keras_models_own(tmp_path: Path) -> None:
    """A network built for 40x40 faces exports input_size 40: the export reads the size from
    the model, not from a constant."""
    inputs = keras.Input((40, 40, 1))
    x = keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(7, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    export(keras.Model(inputs, outputs), tmp_path / "forty.onnx")
    model = EmotionModel(tmp_path / "forty.onnx")
    assert model.input_size == 40 and model.predict(np.zeros((2, 40, 40), np.uint8)).shape == (2, 7)


def test_evaluate_counts_confusion_and_recall(
    run: Path, tmp_path: Path, public_test: tuple[np.ndarray, np.ndarray]
) -> None:
    path = tmp_path / "emotion.onnx"
    export(keras.models.load_model(run / "best.keras"), path)
    images, labels = public_test[0][:400], public_test[1][:400]
    report = evaluate(EmotionModel(path), images, labels, "PublicTest")
    confusion = np.array(report.confusion)
    assert confusion.sum() == 400 and report.faces == 400
    assert report.accuracy == pytest.approx(np.trace(confusion) / 400)
    for i, name in enumerate(EMOTIONS):
        row = confusion[i].sum()
        assert report.recall[name] == pytest.approx(confusion[i, i] / row if row else 0.0)


def test_a_further_cycle_starts_from_the_init_weights_keras_or_h5(
    run: Path, tmp_path: Path, public_test: tuple[np.ndarray, np.ndarray]
) -> None:
    """--init takes a run's .keras checkpoint or the committed .weights.h5 (how the shipped
    model's cycles started)."""
    faces = _sample(public_test[0], 8)
    for init, source in (
        (run / "best.keras", keras.models.load_model(run / "best.keras")),
        (SHIPPED_WEIGHTS, shipped_keras_model()),
    ):
        model, first_epoch = _model(recipe("emonet-slim-kd"), tmp_path / init.name, steps_per_epoch=5, init=init)
        assert first_epoch == 0
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(model(faces, training=False)),
            keras.ops.convert_to_numpy(source(faces, training=False)),
            atol=1e-6,
        )


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_exports_with_parity(
    name: str, tmp_path: Path, public_test: tuple[np.ndarray, np.ndarray]
) -> None:
    """Untrained nets with random batch-norm statistics, so export's folds have work to do."""
    model = build(name)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0.0, 0.1, size).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, size).astype("float32"))
    _exported_matches_keras(model, tmp_path / f"{name}.onnx", _sample(public_test[0], 32))
