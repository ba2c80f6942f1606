"""Train for real on a few hundred FER-2013 faces, resume, export, and check ONNX/Keras parity.

Needs the ``train`` extra (TensorFlow/Keras, onnx) and ../shared/fer2013; CI has both.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
ort = pytest.importorskip("onnxruntime")

from emopipe.labels import EMOTIONS  # noqa: E402
from training.data import DEFAULT_DATA, load_folder  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.export import export  # noqa: E402
from training.models import ARCHITECTURES, build  # noqa: E402
from training.recipes import recipe  # noqa: E402
from training.train import train  # noqa: E402

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
    """Two epochs on 300 faces, interrupted after the first and resumed."""
    out = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    r = recipe("emonet", epochs=2, batch_size=64)
    train(r, DEFAULT_DATA, out, cache, limit=300, stop_after=1)
    with (out / "history.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["0"]
    train(r, DEFAULT_DATA, out, cache, limit=300, snapshots_from=2)
    return out


def test_interrupted_run_resumes_at_next_epoch_with_all_artifacts(run: Path) -> None:
    with (run / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert all(0.0 <= float(row["val_accuracy"]) <= 1.0 for row in rows)
    for name in ("last.keras", "best.keras", "recipe.json", "curves.png"):
        assert (run / name).stat().st_size > 0, name
    assert json.loads((run / "recipe.json").read_text())["architecture"] == "emonet"
    assert sorted(p.name for p in (run / "epochs").iterdir()) == ["epoch-02.keras"]


def _exported_matches_keras(model: keras.Model, path: Path, faces: np.ndarray) -> np.ndarray:
    """Exports ``model`` to ``path``, asserts onnxruntime and Keras agree to 1e-4 on ``faces``
    and returns onnxruntime's probabilities."""
    export(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_probs = session.run(None, {session.get_inputs()[0].name: faces})[0]
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
    path = tmp_path / "emotion.onnx"
    export(keras.models.load_model(run / "best.keras"), path, {"recipe": "emonet"})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.type == "tensor(float)" and inp.shape[1:] == [48, 48, 1] and isinstance(inp.shape[0], str)
    assert out.shape[1:] == [7]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["labels"]) == list(EMOTIONS)
    assert meta["input_size"] == "48" and meta["recipe"] == "emonet"
    for batch in (1, 5):
        probs = session.run(None, {inp.name: np.full((batch, 48, 48, 1), 128, np.float32)})[0]
        assert probs.shape == (batch, 7)


def test_evaluate_counts_confusion_and_recall(
    run: Path, tmp_path: Path, public_test: tuple[np.ndarray, np.ndarray]
) -> None:
    path = tmp_path / "emotion.onnx"
    export(keras.models.load_model(run / "best.keras"), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images, labels = public_test[0][:400], public_test[1][:400]
    report = evaluate(session, images, labels, "PublicTest")
    confusion = np.array(report.confusion)
    assert confusion.sum() == 400 and report.faces == 400
    assert report.accuracy == pytest.approx(np.trace(confusion) / 400)
    for i, name in enumerate(EMOTIONS):
        row = confusion[i].sum()
        assert report.recall[name] == pytest.approx(confusion[i, i] / row if row else 0.0)


def test_refine_run_starts_from_the_init_checkpoint_weights(
    run: Path, tmp_path: Path, public_test: tuple[np.ndarray, np.ndarray]
) -> None:
    from training.train import _model

    best = keras.models.load_model(run / "best.keras")
    model, first_epoch = _model(recipe("emonet-refine"), tmp_path, steps_per_epoch=5, init=run / "best.keras")
    assert first_epoch == 0
    faces = _sample(public_test[0], 8)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(faces, training=False)),
        keras.ops.convert_to_numpy(best(faces, training=False)),
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
