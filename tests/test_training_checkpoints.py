"""A checkpoint written under the PyTorch backend (a GPU machine) loads, predicts and resumes
under TensorFlow (this machine): the fixture in tests/data was saved by
tests/data/make_torch_checkpoint.py with KERAS_BACKEND=torch."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from training.models import load_checkpoint  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
CHECKPOINT = DATA / "torch-adamw.keras"


def test_the_fixture_names_the_torch_backends_optimizer_module() -> None:
    with zipfile.ZipFile(CHECKPOINT) as archive:
        config = archive.read("config.json").decode()
    assert "keras.src.backend.torch.optimizers" in config  # what plain load_model cannot import


def test_a_torch_checkpoint_loads_with_its_optimizer_state_and_predictions() -> None:
    expected = np.load(DATA / "torch-adamw.npz")
    model = load_checkpoint(CHECKPOINT)
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert int(model.optimizer.iterations.numpy()) == 1
    assert model.optimizer.weight_decay == pytest.approx(0.01)
    moments = [v for v in model.optimizer.variables if "momentum" in v.path]
    assert moments and all(np.abs(v.numpy()).max() > 0 for v in moments)  # the step's state came along
    faces = expected["faces"].astype("float32")
    np.testing.assert_allclose(model.predict(faces, verbose=0), expected["predictions"], atol=1e-5)


def test_a_torch_checkpoint_resumes_training_under_this_backend(tmp_path: Path) -> None:
    expected = np.load(DATA / "torch-adamw.npz")
    model = load_checkpoint(CHECKPOINT)
    before = [w.copy() for w in model.get_weights()]
    model.train_on_batch(expected["faces"].astype("float32"), expected["targets"])
    assert int(model.optimizer.iterations.numpy()) == 2
    assert any(np.abs(a - b).max() > 0 for a, b in zip(model.get_weights(), before, strict=True))
    model.save(tmp_path / "resumed.keras")
    assert int(load_checkpoint(tmp_path / "resumed.keras").optimizer.iterations.numpy()) == 2


def test_plain_load_model_fails_on_it_which_is_why_load_checkpoint_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine with TensorFlow and no PyTorch (as CI is; PyTorch is hidden in case it is
    installed, with any of Keras's PyTorch-backend modules already imported)."""
    monkeypatch.setitem(sys.modules, "torch", None)
    for name in [m for m in sys.modules if m.startswith("keras.src.backend.torch")]:
        monkeypatch.delitem(sys.modules, name)
    assert load_checkpoint(CHECKPOINT).optimizer.__class__.__name__ == "AdamW"
    with pytest.raises(TypeError, match="AdamW"):
        keras.models.load_model(CHECKPOINT)
