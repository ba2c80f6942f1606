"""Two models compared on the same faces: which faces only one of them gets right.

Two accuracies on one split differ by less than either's standard error more often than
not (0.77 points on PublicTest's 3,589 faces at 69%), but the two models are wrong on mostly
the same faces. The faces where they disagree about being right carry the comparison: under
"neither is better" each of them is equally likely to be the first model's, and the exact
two-sided sign (binomial) test says how surprising the split is.

    emopipe-evaluate new.onnx --against old.onnx
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Paired:
    faces: int
    only_first: int  # faces the first model gets right and the second does not
    only_second: int
    both: int

    @property
    def p_value(self) -> float:
        """Exact two-sided sign test of ``only_first`` against ``only_second``."""
        return sign_test(self.only_first, self.only_second)


def compare(first: np.ndarray, second: np.ndarray, labels: np.ndarray) -> Paired:
    """``first`` and ``second``: the two models' predicted class ids for the faces of ``labels``."""
    if not first.shape == second.shape == labels.shape:
        raise ValueError(f"predictions of shapes {first.shape} and {second.shape} for labels of shape {labels.shape}")
    a, b = first == labels, second == labels
    return Paired(len(labels), int((a & ~b).sum()), int((~a & b).sum()), int((a & b).sum()))


def sign_test(wins: int, losses: int) -> float:
    """Two-sided p-value of ``wins`` against ``losses`` under a fair coin: twice the smaller
    tail, capped at 1 (1.0 when there is nothing to compare)."""
    if wins < 0 or losses < 0:
        raise ValueError(f"counts must not be negative: {wins}, {losses}")
    n, k = wins + losses, min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def format_paired(result: Paired, first: str, second: str) -> str:
    return (
        f"paired on {result.faces} faces: {result.only_first} right only by {first}, "
        f"{result.only_second} only by {second}, {result.both} by both; "
        f"sign test p = {result.p_value:.3g}"
    )
