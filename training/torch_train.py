"""Train a recipe in plain PyTorch: bfloat16 on a CPU's matrix units (AMX), or on a CUDA GPU.

    KERAS_BACKEND=torch python -m training.torch_train --recipe emonet-wide
    KERAS_BACKEND=torch python -m training.torch_train --recipe emonet-slim-kd \\
        --teacher runs/emonet-wide/best.keras --init training/checkpoints/emonet-slim.weights.h5

The same recipes, data, augmentation, seeds, options and run folder as ``emopipe-train``
(``recipe.json``, ``history.csv``, ``curves.png``, ``best.keras``, ``epochs/epoch-NN.keras``),
so ``training.average``, ``training.half``, ``emopipe-export`` and ``--teacher`` read what it
writes. The network is the Keras model of ``training.models``, its weights copied into
PyTorch modules (``training.torch_net``) and back after every epoch. What differs:

- it is faster on a CPU with bfloat16 matrix units (Intel AMX): an ``emonet-wide`` step of
  256 faces takes 1.05 s on 2 cores, against 1.8 s for Keras on TensorFlow under
  ``mixed_bfloat16`` (2.9 s in float32) and 3.4 s on Keras's PyTorch backend
  (``python -m training.step_speed``; the model card has the table);
- ``--precision bf16`` (the default) runs convolutions and dense layers under bfloat16
  autocast, weights and optimizer state in float32; ``fp32`` runs everything in float32;
- it runs the cosine ``adamw`` recipes only (AdamW with Keras's epsilon, warm-up then
  cosine decay to 0, stepped per batch as Keras's ``CosineDecay``); the paper's ``adam``
  recipes, with their plateau and early-stopping callbacks, stay with ``emopipe-train``;
- ``last.pt`` (network, optimizer, history) replaces ``last.keras`` as what a run resumes
  from, so a run folder belongs to one of the two commands.

Teachers given as ``.keras`` files are converted too and run under the same precision
(``Precision.runner``, handed to ``training.distill.Teachers``); ``.onnx`` teachers run in
onnxruntime as with ``emopipe-train``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import torch
from torch.nn import functional

from emopipe.labels import NUM_CLASSES
from training.data import cached_splits
from training.distill import Teachers
from training.models import build
from training.plots import plot_curves
from training.recipes import Recipe, recipe
from training.torch_net import TorchNet, copy_to_keras
from training.train import (
    REPO,
    TORCH_CHECKPOINT,
    FaceBatches,
    check_teachers,
    parse_run_arguments,
    run_arguments,
    run_options,
    subset,
)

log = logging.getLogger("emopipe.torch_train")

_COLUMNS = ("epoch", "accuracy", "learning_rate", "loss", "val_accuracy", "val_loss")


def learning_rate(r: Recipe, step: int, steps_per_epoch: int) -> float:
    """The learning rate of 0-based optimizer step ``step``: Keras's ``CosineDecay`` as
    ``emopipe-train`` builds it (warm-up from 1/100 of the peak, then cosine to 0)."""
    total = r.epochs * steps_per_epoch
    warmup = min(r.warmup_epochs * steps_per_epoch, total // 2)
    start = r.learning_rate / 100
    if step < warmup:
        return start + (r.learning_rate - start) * step / warmup
    done = min(step - warmup, total - warmup) / (total - warmup)
    return r.learning_rate * 0.5 * (1 + math.cos(math.pi * done))


class Precision:
    """Where and how the network runs: a device, and bfloat16 autocast or plain float32."""

    def __init__(self, device: str, precision: str) -> None:
        self.device = torch.device(device)
        self.bf16 = precision == "bf16"

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(self.device, non_blocking=True)

    def runner(self, model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
        """A ``.keras`` teacher (``training.distill.KerasRunner``) converted to PyTorch and run
        on this device under this precision; a float16 copy (training.half) is held in float32."""
        net = TorchNet(model).to(self.device).eval()

        @torch.no_grad()
        def run(images: np.ndarray) -> np.ndarray:
            with self.autocast():
                return net.probabilities(self.tensor(images[..., None])).cpu().numpy()

        return run


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Categorical cross-entropy against (soft) targets, label smoothing as Keras applies it."""
    targets = targets * (1 - smoothing) + smoothing / NUM_CLASSES
    return -(targets * functional.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


@torch.no_grad()
def _validate(
    net: TorchNet, images: np.ndarray, labels: np.ndarray, precision: Precision, smoothing: float
) -> tuple[float, float]:
    """PublicTest (loss, accuracy), the network in inference mode."""
    net.eval()
    losses, correct = [], 0
    for start in range(0, len(labels), 512):
        x = precision.tensor(images[start : start + 512, ..., None])
        y = torch.from_numpy(labels[start : start + 512]).to(precision.device)
        with precision.autocast():
            logits = net(x)
        onehot = functional.one_hot(y, NUM_CLASSES).float()
        losses.append(float(soft_cross_entropy(logits, onehot, smoothing)) * len(y))
        correct += int((logits.argmax(1) == y).sum())
    return sum(losses) / len(labels), correct / len(labels)


def _save(path: Path, state: dict) -> None:
    """``torch.save`` through a temporary file, so an interrupted write leaves the old checkpoint."""
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _write_history(out: Path, rows: list[dict[str, float]]) -> None:
    with (out / "history.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def train(
    r: Recipe,
    data: Path,
    out: Path,
    cache: Path,
    precision: Precision,
    limit: int = 0,
    stop_after: int = 0,
    init: Path | None = None,
    snapshots_from: int = 0,
    teachers: Sequence[Path] = (),
    time_limit: float = 0.0,
) -> keras.Model:
    """Train ``r`` into ``out`` (resuming from ``out/last.pt``); returns the Keras model with
    the weights of the last epoch run."""
    if r.optimizer != "adamw":
        raise SystemExit(
            f"recipe uses the {r.optimizer!r} optimizer with plateau and early-stopping callbacks; "
            "training.torch_train runs the cosine 'adamw' recipes only: use emopipe-train for it"
        )
    check_teachers(r, teachers)
    if (out / "last.keras").is_file():
        raise SystemExit(f"{out} holds an emopipe-train run (last.keras); resume it with emopipe-train")
    r.claim(out)
    keras.utils.set_random_seed(r.seed)
    torch.manual_seed(r.seed)
    train_split, (val_images, val_labels) = cached_splits(data, cache)
    train_split = subset(train_split, limit, r.seed)
    val_images, val_labels = subset((val_images, val_labels), limit, r.seed)
    steps = math.ceil(len(train_split[1]) / r.batch_size)

    model = build(r.architecture)
    if init is not None:
        log.info("starting from the weights of %s", init)
        model.load_weights(init)
    net = TorchNet(model).to(precision.device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=r.learning_rate, eps=1e-7, weight_decay=r.weight_decay)
    rows: list[dict[str, float]] = []
    checkpoint = out / TORCH_CHECKPOINT
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=precision.device, weights_only=True)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        rows = state["history"]
        log.info("resuming %s after epoch %d", checkpoint, len(rows))
    first = len(rows)
    if first >= r.epochs:
        log.info("%s already finished %d epochs", out, first)
        return copy_to_keras(net, model)
    log.info(
        "training %s (%d parameters) on %d faces, validating on %d PublicTest faces, %s on %s",
        r.architecture,
        model.count_params(),
        len(train_split[1]),
        len(val_labels),
        "bfloat16 autocast" if precision.bf16 else "float32",
        precision.device,
    )
    batches = FaceBatches(
        train_split,
        r.batch_size,
        r.augmentation,
        r.seed,
        first,
        Teachers(teachers, precision.runner) if teachers else None,
        r.teacher_weight,
    )
    best = max((row["val_accuracy"] for row in rows), default=-1.0)
    started = time.monotonic()
    longest = 0.0
    for epoch in range(first, r.epochs):
        began = time.monotonic()
        net.train()
        # Summed on the device and read once an epoch: reading them every step would make the
        # host wait for each step on a GPU.
        loss_sum = torch.zeros((), device=precision.device)
        correct = torch.zeros((), dtype=torch.int64, device=precision.device)
        seen = 0
        for index in range(steps):
            lr = learning_rate(r, epoch * steps + index, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, targets = batches[index]
            x, t = precision.tensor(images), precision.tensor(targets)
            with precision.autocast():
                logits = net(x)
            loss = soft_cross_entropy(logits, t, r.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(t)
            correct += (logits.argmax(1) == t.argmax(1)).sum()
            seen += len(t)
        batches.on_epoch_end()
        val_loss, val_accuracy = _validate(net, val_images, val_labels, precision, r.label_smoothing)
        row = {
            "epoch": epoch,
            "accuracy": int(correct) / seen,
            "learning_rate": lr,
            "loss": float(loss_sum) / seen,
            "val_accuracy": val_accuracy,
            "val_loss": val_loss,
        }
        rows.append(row)
        copy_to_keras(net, model)
        if val_accuracy > best:
            best = val_accuracy
            model.save(out / "best.keras")
        if snapshots_from and epoch + 1 >= snapshots_from:
            (out / "epochs").mkdir(exist_ok=True)
            model.save(out / "epochs" / f"epoch-{epoch + 1:02d}.keras")
        _save(checkpoint, {"net": net.state_dict(), "optimizer": optimizer.state_dict(), "history": rows})
        _write_history(out, rows)
        plot_curves(out / "history.csv", out / "curves.png")
        now = time.monotonic()
        longest = max(longest, now - began)
        log.info(
            "epoch %d/%d: loss %.4f, accuracy %.4f, PublicTest loss %.4f, accuracy %.4f (best %.4f), lr %.3g, %.0f s",
            epoch + 1,
            r.epochs,
            row["loss"],
            row["accuracy"],
            val_loss,
            val_accuracy,
            best,
            lr,
            now - began,
        )
        if stop_after and epoch + 1 - first >= stop_after:
            break
        if time_limit and now - started + longest > time_limit:
            log.info("stopping before the %.0f s time limit; the same command resumes", time_limit)
            break
    return model


def main(argv: list[str] | None = None) -> int:
    parser = run_arguments(__doc__)
    parser.set_defaults(recipe="emonet-wide")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when there is one)")
    parser.add_argument(
        "--precision", choices=("bf16", "fp32"), default="bf16", help="bfloat16 autocast (default) or float32"
    )
    args = parse_run_arguments(parser, argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    r = recipe(args.recipe, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    out = args.out or REPO / "runs" / args.recipe
    train(r, args.data, out, args.cache, Precision(device, args.precision), **run_options(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
