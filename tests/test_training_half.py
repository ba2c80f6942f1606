"""training.half: a float16 copy of the shipped weights answers as the float32 model does, at
half the bytes, and loads as a distillation teacher."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from helpers import REPO, shipped_keras_model  # noqa: E402
from training.data import DEFAULT_DATA, load_folder  # noqa: E402
from training.distill import Teacher  # noqa: E402
from training.half import half  # noqa: E402

if not (DEFAULT_DATA / "test").is_dir():
    pytest.skip(f"FER-2013 not found at {DEFAULT_DATA}", allow_module_level=True)


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """128 real PublicTest faces from every class (raw 0..255, ``[N,48,48]``)."""
    images, _ = load_folder(DEFAULT_DATA / "test")
    return images[np.random.default_rng(0).choice(len(images), 128, replace=False)]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.half", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The shipped weights as a float32 ``.keras`` file and the CLI's float16 copy of it."""
    folder = tmp_path_factory.mktemp("half")
    full, copy16 = folder / "slim.keras", folder / "slim-fp16.keras"
    shipped_keras_model().save(full)
    done = _cli(str(full), str(copy16))
    assert done.returncode == 0, done.stderr
    assert f"wrote {copy16}" in done.stdout
    return full, copy16


def _probabilities(model: keras.Model, faces: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(faces[..., None].astype("float32"), training=False)), np.float32)


def test_half_copy_answers_like_the_float_model(faces: np.ndarray) -> None:
    model = shipped_keras_model()
    copy16 = half(model)
    assert {str(w.dtype) for w in copy16.weights} == {"float16"}
    assert copy16.input.dtype == "float32"
    full, low = _probabilities(model, faces), _probabilities(copy16, faces)
    assert np.abs(full - low).max() < 5e-3
    assert np.abs(full - low).mean() < 5e-4
    assert (full.argmax(1) == low.argmax(1)).mean() >= 0.99


def test_half_file_is_about_half_and_loads_as_a_teacher(saved: tuple[Path, Path], faces: np.ndarray) -> None:
    full, copy16 = saved
    assert copy16.stat().st_size < 0.6 * full.stat().st_size
    expected = Teacher(full).probabilities(faces)
    got = Teacher(copy16).probabilities(faces)
    assert got.dtype == np.float32 and got.shape == (len(faces), 7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=2e-3)
    assert np.abs(got - expected).max() < 5e-3


def test_cli_names_a_missing_checkpoint(tmp_path: Path) -> None:
    done = _cli(str(tmp_path / "absent.keras"), str(tmp_path / "out.keras"))
    assert done.returncode == 2
    assert f"{tmp_path / 'absent.keras'}: checkpoint not found" in done.stderr


def test_cli_refuses_an_output_that_is_not_keras(saved: tuple[Path, Path], tmp_path: Path) -> None:
    done = _cli(str(saved[0]), str(tmp_path / "out.h5"))
    assert done.returncode == 2
    assert "must end in .keras" in done.stderr
    assert not (tmp_path / "out.h5").exists()


def test_cli_names_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a model")
    done = _cli(str(bogus), str(tmp_path / "out.keras"))
    assert done.returncode == 2
    assert f"{bogus}: not a Keras checkpoint" in done.stderr
    assert not (tmp_path / "out.keras").exists()
