"""training.quantize: int8 export of the shipped weights, checked against the float graph on real faces."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
keras = pytest.importorskip("keras")
import onnxruntime as ort  # noqa: E402

from emopipe.labels import EMOTIONS  # noqa: E402
from helpers import shipped_keras_model  # noqa: E402
from services.classify.model import EmotionModel  # noqa: E402
from training.data import DEFAULT_DATA, load_folder  # noqa: E402
from training.evaluate import predict  # noqa: E402
from training.export import export  # noqa: E402
from training.export import main as export_main  # noqa: E402
from training.models import build  # noqa: E402
from training.quantize import METADATA_VALUE, calibration_faces  # noqa: E402

if not (DEFAULT_DATA / "train").is_dir():
    pytest.skip(f"FER-2013 not found at {DEFAULT_DATA}", allow_module_level=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The shipped weights exported flip-averaged, as float32 and as int8 (64 calibration faces)."""
    model = shipped_keras_model()
    folder = tmp_path_factory.mktemp("int8")
    export(model, folder / "float.onnx", flip_average=True)
    export(model, folder / "int8.onnx", flip_average=True, int8_calibration=calibration_faces(DEFAULT_DATA, 64))
    return folder / "float.onnx", folder / "int8.onnx"


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    """400 real PublicTest faces and their labels."""
    images, labels = load_folder(DEFAULT_DATA / "test")
    picked = np.random.default_rng(2).choice(len(labels), 400, replace=False)
    return images[picked], labels[picked]


def _optimize(path: Path, optimized: Path) -> None:
    """Writes the graph onnxruntime runs for ``path`` (after its fusions) to ``optimized``."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_int8_model_answers_like_the_float_model_on_real_faces(exported: tuple[Path, Path], faces) -> None:
    images, labels = faces
    float_probs = predict(EmotionModel(exported[0]), images)
    int8_probs = predict(EmotionModel(exported[1]), images)
    assert int8_probs.shape == (400, 7)
    np.testing.assert_allclose(int8_probs.sum(axis=1), 1.0, atol=1e-4)
    assert (int8_probs.argmax(axis=1) == float_probs.argmax(axis=1)).mean() >= 0.95
    assert np.abs(int8_probs - float_probs).mean() < 0.01
    float_accuracy = (float_probs.argmax(axis=1) == labels).mean()
    assert abs((int8_probs.argmax(axis=1) == labels).mean() - float_accuracy) <= 0.02
    # Not the float graph under another name: quantization moves the numbers.
    assert np.abs(int8_probs - float_probs).max() > 1e-4


def test_int8_answers_do_not_depend_on_the_rest_of_the_batch(exported: tuple[Path, Path], faces) -> None:
    model = EmotionModel(exported[1])
    batch = faces[0][:32]
    whole = model.predict(batch)
    one_by_one = np.concatenate([model.predict(batch[i : i + 1]) for i in range(32)])
    np.testing.assert_allclose(one_by_one, whole, atol=1e-6)


def test_int8_graph_runs_integer_convolutions_after_the_float_first_one(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    model = EmotionModel(exported[1])
    assert model.labels == EMOTIONS and model.input_size == 48
    assert model.session.get_modelmeta().custom_metadata_map["precision"] == METADATA_VALUE
    proto = onnx.load(str(exported[1]))
    weights = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] in weights  # the first convolution keeps float32 weights
    assert all(n.input[1] not in weights for n in convs[1:])  # the others read int8 through DequantizeLinear
    assert [n.op_type for n in proto.graph.node if n.name.endswith("/guard")] == ["Relu"]
    # onnxruntime fuses the QDQ pairs into integer kernels, and no pool reads a quantized
    # tensor in NCHW layout (the slow path the guard Relu prevents).
    _optimize(exported[1], tmp_path / "optimized.onnx")
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph.node
    assert [n.op_type for n in optimized].count("QLinearConv") == len(convs) - 1
    quantized = {n.output[0] for n in optimized if n.op_type == "QuantizeLinear"}
    assert not [n.name for n in optimized if n.op_type == "MaxPool" and n.domain == "" and n.input[0] in quantized]


def test_calibration_draws_training_faces_reproducibly(tmp_path: Path) -> None:
    first, again = calibration_faces(DEFAULT_DATA, 20, seed=3), calibration_faces(DEFAULT_DATA, 20, seed=3)
    assert first.shape == (20, 48, 48) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, calibration_faces(DEFAULT_DATA, 20, seed=4))
    tiny = tmp_path / "tiny"
    (tiny / "train" / "happy").mkdir(parents=True)
    cv2.imwrite(str(tiny / "train" / "happy" / "a.png"), np.zeros((48, 48), np.uint8))
    with pytest.raises(ValueError, match=r"tiny/train has 1 Training faces, fewer than the 5"):
        calibration_faces(tiny, 5)


def test_export_command_rejects_bad_calibration_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "model.keras"
    build("emonet-slim").save(checkpoint)
    out = str(tmp_path / "out.onnx")
    with pytest.raises(SystemExit):
        export_main([str(checkpoint), out, "--int8", "--calibration-data", str(tmp_path / "nope")])
    with pytest.raises(SystemExit):
        export_main([str(checkpoint), out, "--int8", "--calibration-faces", "0"])
    assert not (tmp_path / "out.onnx").exists()
    err = capsys.readouterr().err
    assert "nope: not found" in err and "--calibration-faces 0: need at least one face" in err
