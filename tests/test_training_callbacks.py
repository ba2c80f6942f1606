"""Plateau and early-stopping patience carry over a resumed run exactly as in one long run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

pytest.importorskip("keras")
import keras  # noqa: E402

from training import callbacks as callbacks_module  # noqa: E402
from training.callbacks import ResumableEarlyStopping, ResumableReduceLROnPlateau, StopBefore  # noqa: E402
from training.recipes import recipe  # noqa: E402
from training.train import _callbacks  # noqa: E402

# PublicTest accuracy that climbs, stalls (learning rate halved after 3 epochs without
# improvement), climbs once more, then stalls for good (stopped after 6).
CURVE = [0.40, 0.45, 0.50, 0.52, 0.52, 0.51, 0.515, 0.50, 0.55, 0.54, 0.55, 0.53, 0.549, 0.54, 0.53]


def _model(lr: float = 1e-3) -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    return model


def _pair() -> tuple[ResumableReduceLROnPlateau, ResumableEarlyStopping]:
    plateau = ResumableReduceLROnPlateau(monitor="val_accuracy", mode="max", factor=0.5, patience=3, min_lr=1e-5)
    return plateau, ResumableEarlyStopping(monitor="val_accuracy", mode="max", patience=6)


def _run(callbacks, model: keras.Model, values: list[float], first_epoch: int) -> list[tuple]:
    """Feeds ``values`` as epochs ``first_epoch...``; the learning rate, waits and stop flag after each."""
    model.stop_training = False
    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin()
    trace = []
    for epoch, value in enumerate(values, first_epoch):
        for callback in callbacks:
            callback.on_epoch_end(epoch, {"val_accuracy": value})
        lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        trace.append((round(lr, 9), callbacks[0].wait, callbacks[1].wait, model.stop_training))
    return trace


@pytest.mark.parametrize("split", [1, 5, 7, 10, 13])
def test_a_resumed_run_counts_patience_like_one_long_run(split: int) -> None:
    whole = _run(_pair(), _model(), CURVE, 0)
    assert [lr for lr, *_ in whole] == [1e-3] * 6 + [5e-4] * 5 + [2.5e-4] * 3 + [1.25e-4]
    assert whole[-1][3] and not any(stop for *_, stop in whole[:-1])  # stopped at the last epoch

    plateau, early = _pair()
    _run((plateau, early), _model(), CURVE[:split], 0)
    resumed = _pair()
    stopped, lr = resumed[0].replay(CURVE[:split], 1e-3)
    assert resumed[1].replay(CURVE[:split], 1e-3)[0] is False and stopped is False
    assert lr == whole[split - 1][0]
    # the checkpoint carries the optimizer's learning rate; the replay carries the counters
    assert _run(resumed, _model(lr), CURVE[split:], split) == whole[split:]


def test_a_run_without_carry_over_would_not_stop() -> None:
    """What the replay fixes: counters reset at the resume miss the stop."""
    fresh = _run(_pair(), _model(5e-4), CURVE[10:], 10)
    assert not any(stop for *_, stop in fresh)


def _history(folder: Path, values: list[float]) -> None:
    folder.mkdir()
    with (folder / "history.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "accuracy", "loss", "val_accuracy", "val_loss"])
        writer.writerows([i, 0.5, 1.0, value, 1.0] for i, value in enumerate(values))


def test_a_run_its_history_has_already_stopped_is_not_trained_further(tmp_path: Path) -> None:
    r = recipe("paper")
    patience = r.early_stopping_patience
    assert patience > r.plateau_patience
    _history(tmp_path / "stalled", [0.5] + [0.49] * patience)
    _, stopped = _callbacks(r, tmp_path / "stalled", _model(1e-5))
    assert stopped
    _history(tmp_path / "going", [0.5] + [0.49] * (patience - 1))
    callbacks, stopped = _callbacks(r, tmp_path / "going", _model(1e-5))
    assert not stopped
    early = next(c for c in callbacks if isinstance(c, ResumableEarlyStopping))
    early.set_model(_model())
    early.on_train_begin()
    assert (early.wait, early.best) == (patience - 1, 0.5)


def test_stop_before_ends_after_the_last_epoch_that_fits_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 100.0, 190.0, 300.0, 420.0])  # construction, then the end of each epoch
    monkeypatch.setattr(callbacks_module.time, "monotonic", lambda: next(clock))
    stop = StopBefore(530)
    model = _model()
    stop.set_model(model)
    flags = []
    for epoch in range(4):
        stop.on_epoch_end(epoch)
        flags.append(model.stop_training)
    # Epochs take 100, 90, 110, 120 s. After 300 s one more of the longest (110 s) ends at 410,
    # within 530; after 420 s one more of 120 s would end at 540, past it: the run stops there.
    assert flags == [False, False, False, True]
