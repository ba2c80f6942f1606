"""The callbacks of ``emopipe-train`` beyond Keras's own: stopping an invocation, keeping
snapshots, redrawing curves, and patience that carries over a resume."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import keras

from training.plots import plot_curves


class StopAfter(keras.callbacks.Callback):
    """Ends this invocation after ``epochs`` epochs; the run resumes from ``last.keras`` next time."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.seen = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seen += 1
        if self.seen >= self.epochs:
            self.model.stop_training = True


class StopBefore(keras.callbacks.Callback):
    """Ends this invocation after the last epoch that can finish within ``seconds`` of the
    start (judged by the longest epoch so far), so a machine lent for a fixed time hands back
    whole checkpoints, never one cut off while being written; the run resumes next time."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.start = time.monotonic()
        self.last = self.start
        self.longest = 0.0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = time.monotonic()
        self.longest = max(self.longest, now - self.last)
        self.last = now
        if now - self.start + self.longest > self.seconds:
            self.model.stop_training = True


class Snapshots(keras.callbacks.Callback):
    """Keeps ``epochs/epoch-NN.keras`` for every epoch from ``first`` on (for ``training.average``)."""

    def __init__(self, folder: Path, first: int) -> None:
        super().__init__()
        self.folder = folder
        self.first = first

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 >= self.first:
            self.folder.mkdir(exist_ok=True)
            self.model.save(self.folder / f"epoch-{epoch + 1:02d}.keras")


class EpochArtifacts(keras.callbacks.Callback):
    """Redraws the learning curves after every epoch, so an interrupted run still has them."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        plot_curves(self.out / "history.csv", self.out / "curves.png")


class _StandIn:
    """Takes the model's place while earlier epochs are replayed: an optimizer whose learning
    rate the replay may lower, and the flag early stopping sets."""

    def __init__(self, learning_rate: float) -> None:
        self.optimizer = SimpleNamespace(learning_rate=learning_rate)
        self.stop_training = False


class _Resumable:
    """Patience that carries over a resume, for Keras's monitor callbacks.

    ``fit`` resets these callbacks, so a run resumed after epoch 40 would start counting
    epochs without improvement from zero. ``replay`` feeds the values the earlier invocations
    logged (``history.csv``) through the callback's own ``on_epoch_end``, against a stand-in
    model, and the state it ends in is restored after ``fit``'s reset."""

    _STATE = ("best", "wait", "cooldown_counter", "best_epoch")

    def replay(self, past: list[float], learning_rate: float) -> tuple[bool, float]:
        """Replays ``past`` values of the monitored metric from ``learning_rate``; returns
        whether they would have stopped the run, and the learning rate they lead to."""
        stand_in = _StandIn(learning_rate)
        self.set_model(stand_in)  # type: ignore[attr-defined]
        for epoch, value in enumerate(past):
            self.on_epoch_end(epoch, {self.monitor: value})  # type: ignore[attr-defined]
        self._resumed = {name: getattr(self, name) for name in self._STATE if hasattr(self, name)}
        return stand_in.stop_training, float(stand_in.optimizer.learning_rate)

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)  # type: ignore[misc]
        for name, value in getattr(self, "_resumed", {}).items():
            setattr(self, name, value)


class ResumableEarlyStopping(_Resumable, keras.callbacks.EarlyStopping):
    pass


class ResumableReduceLROnPlateau(_Resumable, keras.callbacks.ReduceLROnPlateau):
    pass
