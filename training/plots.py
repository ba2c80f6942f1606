"""Learning-curve and confusion-matrix figures (matplotlib, headless)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(history_csv: Path, png: Path) -> None:
    with history_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("accuracy", "train (augmented)"), ("val_accuracy", "PublicTest")):
        acc.plot(epochs, [float(r[key]) for r in rows], label=label)
    for key, label in (("loss", "train (augmented)"), ("val_loss", "PublicTest")):
        loss.plot(epochs, [float(r[key]) for r in rows], label=label)
    acc.set(title="accuracy", xlabel="epoch")
    loss.set(title="loss", xlabel="epoch")
    acc.legend()
    loss.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], png: Path, title: str) -> None:
    """Row-normalised confusion matrix (rows: true class), counts in each cell."""
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{matrix[i, j]}\n{rates[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
