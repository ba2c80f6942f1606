"""training.flip: flip averaging inside the exported graph, on the shipped weights and real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("keras")
import keras  # noqa: E402
import onnxruntime as ort  # noqa: E402

from helpers import shipped_keras_model  # noqa: E402
from training.data import DEFAULT_DATA, load_folder  # noqa: E402
from training.export import export  # noqa: E402
from training.flip import METADATA_VALUE, add_flip_average  # noqa: E402

if not (DEFAULT_DATA / "test").is_dir():
    pytest.skip(f"FER-2013 not found at {DEFAULT_DATA}", allow_module_level=True)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    model = shipped_keras_model()
    return model


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """48 real PublicTest faces as serving feeds them: raw 0..255, float32 [N,48,48,1]."""
    images, _ = load_folder(DEFAULT_DATA / "test")
    return images[np.random.default_rng(1).choice(len(images), 48, replace=False)][..., None].astype(np.float32)


@pytest.fixture(scope="module")
def flipped_path(model: keras.Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flip") / "emotion.onnx"
    export(model, path, flip_average=True)
    return path


def _run(path: Path, faces: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: faces})[0]


def test_flip_averaged_graph_matches_keras_on_each_face_and_its_mirror(
    model: keras.Model, flipped_path: Path, faces: np.ndarray
) -> None:
    plain = keras.ops.convert_to_numpy(model(faces, training=False))
    mirrored = keras.ops.convert_to_numpy(model(faces[:, :, ::-1].copy(), training=False))
    probs = _run(flipped_path, faces)
    assert probs.shape == (len(faces), 7)
    np.testing.assert_allclose(probs, (plain + mirrored) / 2, atol=1e-4)
    # The averaging changes answers: on these faces the mirror image disagrees somewhere.
    assert np.abs(plain - mirrored).max() > 0.05
    # A mirrored face gets the same answer as the face itself.
    np.testing.assert_allclose(_run(flipped_path, faces[:, :, ::-1].copy()), probs, atol=1e-5)


def test_flip_averaged_graph_keeps_the_contract(flipped_path: Path, faces: np.ndarray) -> None:
    session = ort.InferenceSession(str(flipped_path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.shape[1:] == [48, 48, 1] and isinstance(inp.shape[0], str) and out.shape[1:] == [7]
    assert session.get_modelmeta().custom_metadata_map["test_time_augmentation"] == METADATA_VALUE
    whole = session.run(None, {inp.name: faces})[0]
    for batch in (1, 5):
        part = session.run(None, {inp.name: faces[:batch]})[0]
        np.testing.assert_allclose(part, whole[:batch], atol=1e-6)
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, atol=1e-5)


def test_flip_averaging_twice_or_on_a_foreign_graph_is_refused(flipped_path: Path) -> None:
    proto = onnx.load(str(flipped_path))
    with pytest.raises(ValueError, match="already averages over flips"):
        add_flip_average(proto)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 7])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 7])
    foreign = onnx.helper.make_model(
        onnx.helper.make_graph([onnx.helper.make_node("Softmax", ["x"], ["y"])], "g", [x], [y])
    )
    with pytest.raises(ValueError, match="Reshape/Transpose to NCHW, found \\['Softmax'\\]"):
        add_flip_average(foreign)
