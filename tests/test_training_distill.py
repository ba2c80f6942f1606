"""training.distill: the teacher's flip-averaged targets, on the committed weights and real faces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
keras = pytest.importorskip("keras")
from emopipe.labels import EMOTIONS  # noqa: E402
from helpers import shipped_keras_model  # noqa: E402
from services.classify.model import EmotionModel  # noqa: E402
from training.augment import Augmentation  # noqa: E402
from training.data import DEFAULT_DATA, load_folder  # noqa: E402
from training.distill import Teacher, Teachers, soft_targets  # noqa: E402
from training.export import export  # noqa: E402
from training.recipes import recipe  # noqa: E402
from training.train import FaceBatches, main, train  # noqa: E402

if not (DEFAULT_DATA / "test").is_dir():
    pytest.skip(f"FER-2013 not found at {DEFAULT_DATA}", allow_module_level=True)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed weights exported as a plain float ONNX model: a teacher that answers a face
    and its mirror image differently (the shipped model averages the two inside its graph)."""
    model = shipped_keras_model()
    path = tmp_path_factory.mktemp("teacher") / "teacher.onnx"
    export(model, path)
    return path


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    """64 real PublicTest faces and their labels."""
    images, labels = load_folder(DEFAULT_DATA / "test")
    picked = np.random.default_rng(0).choice(len(labels), 64, replace=False)
    return images[picked], labels[picked]


def test_soft_targets_blend_one_hot_labels_and_teacher() -> None:
    labels = np.array([0, 3, 6])
    teacher = np.full((3, 7), 1 / 7, np.float32)
    blended = soft_targets(labels, teacher, 0.6)
    np.testing.assert_allclose(blended.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(blended[1], [0.6 / 7] * 3 + [0.4 + 0.6 / 7] + [0.6 / 7] * 3, atol=1e-6)
    np.testing.assert_array_equal(soft_targets(labels, teacher, 0.0), np.eye(7)[labels])
    np.testing.assert_allclose(soft_targets(labels, teacher, 1.0), teacher)
    with pytest.raises(ValueError, match="outside"):
        soft_targets(labels, teacher, 1.5)
    with pytest.raises(ValueError, match=r"shape \(2, 7\)"):
        soft_targets(labels, teacher[:2], 0.5)


def test_the_teacher_averages_each_face_with_its_mirror(teacher_path: Path, faces) -> None:
    images, _ = faces
    teacher = Teacher(teacher_path)
    probs = teacher.probabilities(images)
    exported = EmotionModel(teacher_path)
    plain, mirrored = exported.predict(images), exported.predict(images[:, :, ::-1])
    np.testing.assert_allclose(probs, (plain + mirrored) / 2, atol=1e-6)
    np.testing.assert_allclose(teacher.probabilities(images[:, :, ::-1]), probs, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(plain - mirrored).max() > 0.05  # the mirror really changes some answers


def test_a_teacher_with_other_labels_is_refused(teacher_path: Path, tmp_path: Path) -> None:
    model = onnx.load(str(teacher_path))
    for entry in model.metadata_props:
        if entry.key == "labels":
            entry.value = json.dumps(list(reversed(EMOTIONS)))
    swapped = tmp_path / "swapped.onnx"
    onnx.save(model, str(swapped))
    with pytest.raises(ValueError, match="swapped.onnx has labels"):
        Teacher(swapped)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        Teacher(tmp_path / "missing.onnx")


def test_a_keras_teacher_answers_as_its_exported_model_does(teacher_path: Path, faces, tmp_path: Path) -> None:
    """The committed weights as a Keras teacher (how a GPU machine runs one) against the ONNX
    file exported from them."""
    images, _ = faces
    model = shipped_keras_model()
    model.save(tmp_path / "teacher.keras")
    from_keras = Teacher(tmp_path / "teacher.keras").probabilities(images)
    np.testing.assert_allclose(from_keras, Teacher(teacher_path).probabilities(images), atol=1e-4)
    assert from_keras.shape == (len(images), 7) and from_keras.dtype == np.float32


def test_several_teachers_teach_the_mean_of_their_answers(teacher_path: Path, faces, tmp_path: Path) -> None:
    """Two different real teachers: the committed weights, and the same network with its last
    dense layer's bias shifted towards happy (a teacher that disagrees with the first)."""
    images, _ = faces
    model = shipped_keras_model()
    last = model.layers[-1]
    kernel, bias = last.get_weights()
    last.set_weights([kernel, bias + np.eye(7, dtype=np.float32)[3] * 2.0])
    other = tmp_path / "happier.onnx"
    export(model, other)
    first, second = Teacher(teacher_path).probabilities(images), Teacher(other).probabilities(images)
    assert np.abs(first - second).max() > 0.1
    both = Teachers([teacher_path, other]).probabilities(images)
    np.testing.assert_allclose(both, (first + second) / 2, atol=1e-6)
    assert both.shape == (len(images), 7) and both.dtype == np.float32
    np.testing.assert_allclose(Teachers([teacher_path]).probabilities(images), first, atol=1e-7)
    with pytest.raises(ValueError, match="no teacher models"):
        Teachers([])
    with pytest.raises(FileNotFoundError, match="absent.keras"):
        Teachers([teacher_path, tmp_path / "absent.keras"])


def test_a_keras_teacher_must_answer_seven_classes(tmp_path: Path) -> None:
    inputs = keras.Input((48, 48, 1))
    keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(inputs))).save(tmp_path / "five.keras")
    with pytest.raises(ValueError, match=r"five\.keras has output shape \(None, 5\)"):
        Teacher(tmp_path / "five.keras")


def test_batches_carry_the_teachers_targets(teacher_path: Path, faces) -> None:
    images, labels = faces
    teacher = Teacher(teacher_path)
    aug = Augmentation(rotation_deg=10, shift=0.1, zoom=0.1, flip=True, erase_prob=0.5)
    batches = FaceBatches((images, labels), 16, aug, seed=1, teacher=teacher, teacher_weight=0.6)
    batch, targets = batches[1]
    picked = batches.order[16:32]
    expected = 0.4 * np.eye(7)[labels[picked]] + 0.6 * teacher.probabilities(batch[..., 0])
    np.testing.assert_allclose(targets, expected, atol=1e-5)
    assert not np.allclose(targets, np.eye(7)[labels[picked]])


def test_teacher_and_recipe_must_agree(teacher_path: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="needs a teacher model"):
        train(recipe("emonet-slim-kd"), DEFAULT_DATA, tmp_path / "a", tmp_path / "cache")
    with pytest.raises(SystemExit, match="teacher_weight is 0"):
        train(recipe("emonet-slim-long"), DEFAULT_DATA, tmp_path / "b", tmp_path / "cache", teachers=[teacher_path])


def test_the_command_refuses_another_seed_in_a_run_folder_and_a_missing_teacher(
    teacher_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """(A real run of the command with two teachers and a seed: tests/test_training_smoke.py.)"""
    out = tmp_path / "run"
    recipe("emonet-slim-kd", seed=7).claim(out)
    common = ["--data", str(DEFAULT_DATA), "--cache", str(tmp_path / "cache"), "--out", str(out)]
    common += ["--recipe", "emonet-slim-kd", "--teacher", str(teacher_path)]
    with pytest.raises(SystemExit, match="different recipe"):  # resuming under another seed
        main([*common, "--seed", "8"])
    with pytest.raises(SystemExit):
        main([*common, "--seed", "7", "--teacher", str(tmp_path / "gone.onnx")])
    assert "gone.onnx: model not found" in capsys.readouterr().err
    assert json.loads((out / "recipe.json").read_text())["seed"] == 7 and not (out / "history.csv").exists()
