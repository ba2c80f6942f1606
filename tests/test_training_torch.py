"""training.torch_net and training.torch_train: the Keras networks in plain PyTorch, on real faces."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

from helpers import shipped_keras_model  # noqa: E402
from training import train as keras_train  # noqa: E402
from training.average import accuracy  # noqa: E402
from training.data import DEFAULT_DATA, load_folder  # noqa: E402
from training.distill import Teachers  # noqa: E402
from training.half import half  # noqa: E402
from training.models import ARCHITECTURES, build, load_checkpoint  # noqa: E402
from training.recipes import recipe  # noqa: E402
from training.torch_net import TorchNet, copy_from_keras, copy_to_keras  # noqa: E402
from training.torch_train import Precision, learning_rate, main  # noqa: E402

if not (DEFAULT_DATA / "test").is_dir():
    pytest.skip(f"FER-2013 not found at {DEFAULT_DATA}", allow_module_level=True)

CPU32 = Precision("cpu", "fp32")


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    """96 real PublicTest faces and their labels."""
    images, labels = load_folder(DEFAULT_DATA / "test")
    picked = np.random.default_rng(3).choice(len(labels), 96, replace=False)
    return images[picked], labels[picked]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _with_statistics(model: keras.Model, seed: int = 0) -> keras.Model:
    """``model`` with batch-norm scales, offsets and moving statistics away from their
    initial 1/0/0/1, so that a conversion that drops or swaps them shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.get_weights()[0].shape
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, shape),
                    rng.normal(0, 0.2, shape),
                    rng.normal(0, 0.2, shape),
                    rng.uniform(0.5, 2, shape),
                ]
            )
    return model


def _torch_probabilities(net: TorchNet, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.eval().probabilities(torch.from_numpy(images[..., None].astype("float32"))).numpy()


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_answers_as_its_keras_model(name: str, faces) -> None:
    images, _ = faces
    model = _with_statistics(build(name))
    net = TorchNet(model)
    expected = keras.ops.convert_to_numpy(model(images[..., None].astype("float32"), training=False))
    np.testing.assert_allclose(_torch_probabilities(net, images), expected, atol=2e-5)
    assert sum(p.numel() for p in net.parameters()) == sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_trained_weights_answer_alike_and_go_back_into_keras_unchanged(faces) -> None:
    images, _ = faces
    shipped = shipped_keras_model()
    net = TorchNet(shipped)
    expected = shipped.predict(images[..., None].astype("float32"), verbose=0)
    probs = _torch_probabilities(net, images)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert (probs.argmax(1) != probs[:, ::-1].argmax(1)).any()  # real, decisive answers
    back = copy_to_keras(net, build("emonet-slim"))  # another build: other layer names
    for got, want in zip(back.get_weights(), shipped.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_bfloat16_stays_close_to_float32(faces) -> None:
    images, _ = faces
    net = TorchNet(shipped_keras_model())
    exact = _torch_probabilities(net, images)
    with torch.no_grad(), Precision("cpu", "bf16").autocast():
        rough = net.probabilities(torch.from_numpy(images[..., None].astype("float32"))).numpy()
    assert np.abs(rough - exact).max() < 0.05
    assert np.mean(rough.argmax(1) == exact.argmax(1)) >= 0.95


def test_conversion_refuses_what_it_cannot_copy() -> None:
    inputs = keras.Input((48, 48, 1))
    pooled = keras.layers.AveragePooling2D(2, name="avg_pool")(inputs)
    odd = keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(pooled)))
    with pytest.raises(ValueError, match="avg_pool .AveragePooling2D. has no PyTorch counterpart"):
        TorchNet(odd)
    strided = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="strided")(inputs)
    flat = keras.layers.Flatten()(strided)
    with pytest.raises(ValueError, match="strided: only stride-1"):
        TorchNet(keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(flat)))
    with pytest.raises(ValueError, match="does not end in a softmax"):
        TorchNet(keras.Model(inputs, keras.layers.Dense(7)(keras.layers.Flatten()(inputs))))
    net = TorchNet(build("emonet-slim"))
    with pytest.raises(ValueError, match="'emonet' is not the architecture 'emonet-slim'"):
        copy_from_keras(build("emonet"), net)


def test_learning_rate_follows_the_keras_schedule_step_by_step() -> None:
    for name in ("emonet-wide", "emonet-slim-kd", "emonet"):
        r = recipe(name, epochs=7)
        schedule = keras_train.cosine_schedule(r, 13)
        for step in (0, 1, 5, 12, 13, 14, 40, 64, 90):
            want = float(keras.ops.convert_to_numpy(schedule(step)))
            assert learning_rate(r, step, 13) == pytest.approx(want, rel=1e-5, abs=r.learning_rate * 1e-6), (name, step)
    assert learning_rate(recipe("emonet-wide", epochs=7), 91, 13) == pytest.approx(0.0, abs=1e-12)


def test_a_keras_teacher_converted_answers_as_in_keras(faces, tmp_path: Path) -> None:
    """The shipped weights as a float32 and as a float16 (training.half) teacher: the same
    flip-averaged answers as training.distill runs them in Keras, and their mean."""
    images, _ = faces
    model = shipped_keras_model()
    model.save(tmp_path / "teacher.keras")
    half(model).save(tmp_path / "teacher-fp16.keras")
    paths = [tmp_path / "teacher.keras", tmp_path / "teacher-fp16.keras"]
    # Keras computes the float16 copy in float16; PyTorch holds its rounded weights in float32.
    for path, tolerance in zip(paths, (1e-4, 5e-3), strict=True):
        np.testing.assert_allclose(
            Teachers([path], CPU32.runner).probabilities(images), Teachers([path]).probabilities(images), atol=tolerance
        )
    both = Teachers(paths, CPU32.runner).probabilities(images)
    np.testing.assert_allclose(both, Teachers(paths).probabilities(images), atol=5e-3)
    np.testing.assert_allclose(both, Teachers(paths[:1], CPU32.runner).probabilities(images), atol=2e-3)
    assert both.dtype == np.float32 and both.shape == (len(images), 7)


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_a_run_trains_resumes_and_keeps_keras_checkpoints(cache: Path, tmp_path: Path) -> None:
    """Real faces: two epochs of emonet-slim-kd taught by the shipped weights, one invocation at a
    time; the checkpoints it keeps are .keras files whose PublicTest accuracy is the logged one."""
    teacher = tmp_path / "teacher.keras"
    shipped_keras_model().save(teacher)
    run = tmp_path / "run"
    argv = ["--data", str(DEFAULT_DATA), "--cache", str(cache), "--out", str(run), "--recipe", "emonet-slim-kd"]
    argv += ["--epochs", "2", "--batch-size", "64", "--limit", "256", "--precision", "fp32", "--device", "cpu"]
    argv += ["--teacher", str(teacher), "--init", str(keras_train.REPO / "training/checkpoints/emonet-slim.weights.h5")]
    argv += ["--snapshots-from", "2", "--seed", "5"]
    assert main([*argv, "--stop-after", "1"]) == 0
    assert [row["epoch"] for row in _history(run)] == ["0"]
    assert not (run / "epochs").exists()
    assert main(argv) == 0  # resumes from last.pt
    rows = _history(run)
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert json.loads((run / "recipe.json").read_text())["seed"] == 5
    assert all(0.0 < float(row["learning_rate"]) < 1.5e-3 for row in rows)
    assert float(rows[1]["learning_rate"]) < float(rows[0]["learning_rate"])  # cosine decay
    assert (run / "curves.png").stat().st_size > 10_000

    # The snapshot of epoch 2 answers PublicTest (the 256 faces of the run) as the run logged.
    from training.data import cached_splits
    from training.train import subset

    _, val = cached_splits(DEFAULT_DATA, cache)
    images, labels = subset(val, 256, 5)
    single, _ = accuracy(load_checkpoint(run / "epochs" / "epoch-02.keras"), images, labels)
    assert single == pytest.approx(float(rows[1]["val_accuracy"]), abs=1 / 256 + 1e-9)
    assert single > 0.5  # it started from the shipped weights (about 67%)
    best = max(float(row["val_accuracy"]) for row in rows)
    assert accuracy(load_checkpoint(run / "best.keras"), images, labels)[0] == pytest.approx(best, abs=1 / 256 + 1e-9)

    assert main(argv) == 0  # finished: nothing more to do
    assert len(_history(run)) == 2
    with pytest.raises(SystemExit, match="training.torch_train run .last.pt."):
        keras_train.train(recipe("emonet-slim-kd", epochs=2), DEFAULT_DATA, run, cache, teachers=[teacher])
    with pytest.raises(SystemExit, match="different recipe"):
        main([*argv[:-1], "6"])


def test_the_command_refuses_recipes_and_folders_it_cannot_run(cache: Path, tmp_path: Path) -> None:
    common = ["--data", str(DEFAULT_DATA), "--cache", str(cache), "--limit", "64", "--device", "cpu"]
    with pytest.raises(SystemExit, match="'adam' optimizer .* use emopipe-train"):
        main([*common, "--recipe", "paper", "--out", str(tmp_path / "paper")])
    with pytest.raises(SystemExit, match="needs a teacher model"):
        main([*common, "--recipe", "emonet-slim-kd", "--out", str(tmp_path / "kd")])
    (tmp_path / "keras-run").mkdir()
    (tmp_path / "keras-run" / "last.keras").write_bytes(b"")
    with pytest.raises(SystemExit, match="holds an emopipe-train run"):
        main([*common, "--recipe", "emonet-slim-long", "--out", str(tmp_path / "keras-run")])


def test_the_step_benchmark_times_all_four_ways(capsys: pytest.CaptureFixture[str]) -> None:
    from training.step_speed import main as step_speed

    assert step_speed(["--architecture", "emonet-slim", "--batch-size", "8", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("emonet-slim, batch 8, on ")
    timed = [line for line in lines[1:] if ": median " in line]
    assert [line.split(":")[0] for line in timed] == [
        f"Keras ({keras.backend.backend()}), float32",
        f"Keras ({keras.backend.backend()}), mixed_bfloat16",
        "training.torch_train, float32",
        "training.torch_train, bfloat16 autocast",
    ]
    seconds = [float(line.split("median ")[1].split(" s")[0]) for line in timed]
    assert all(value > 0 for value in seconds) and "1.00x the fastest" in " ".join(timed)
