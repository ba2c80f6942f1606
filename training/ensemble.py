"""How well several trained models answer together: what ``--teacher`` given once per model
teaches (the mean of their probabilities), measured before spending a distillation on it.

    python -m training.ensemble training/checkpoints/emonet-wide-fp16.keras runs/emonet-wide-2/fp16.keras

Prints each model's PublicTest accuracy and the ensemble's, one pass and flip-averaged (each
face's probabilities averaged with its mirror image's, the answer a student learns).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from training.data import DEFAULT_CACHE, DEFAULT_DATA, cached_splits
from training.models import load_checkpoint


@dataclass(frozen=True)
class Scores:
    one_pass: int  # faces right
    flipped: int
    faces: int

    def line(self, name: str) -> str:
        return (
            f"{name}: {self.one_pass / self.faces:.2%} one pass ({self.one_pass} of {self.faces}), "
            f"{self.flipped / self.faces:.2%} flip-averaged ({self.flipped})"
        )


def probabilities(model: keras.Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N,7]`` probabilities for raw 0..255 ``[N,48,48]`` faces: one pass, and flip-averaged."""
    faces = images[..., None].astype("float32")
    plain = model.predict(faces, batch_size=256, verbose=0)
    mirrored = model.predict(faces[:, :, ::-1], batch_size=256, verbose=0)
    return plain, (plain + mirrored) / 2


def score(plain: np.ndarray, flipped: np.ndarray, labels: np.ndarray) -> Scores:
    return Scores(int((plain.argmax(1) == labels).sum()), int((flipped.argmax(1) == labels).sum()), len(labels))


def ensemble(models: Sequence[keras.Model], images: np.ndarray, labels: np.ndarray) -> tuple[list[Scores], Scores]:
    """Each model's scores, and those of the mean of their probabilities."""
    if not models:
        raise ValueError("no models given")
    answers = [probabilities(model, images) for model in models]
    members = [score(plain, flipped, labels) for plain, flipped in answers]
    mean_plain = np.mean([plain for plain, _ in answers], axis=0)
    mean_flipped = np.mean([flipped for _, flipped in answers], axis=0)
    return members, score(mean_plain, mean_flipped, labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", type=Path, nargs="+", help=".keras models (float16 copies too)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="image-folder root or Kaggle CSV")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the packed data set is kept")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.checkpoints if not p.is_file()]
    if missing:
        parser.error(f"checkpoint(s) not found: {', '.join(missing)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _, (images, labels) = cached_splits(args.data, args.cache)
    members, together = ensemble([load_checkpoint(p) for p in args.checkpoints], images, labels)
    for path, scores in zip(args.checkpoints, members, strict=True):
        print(scores.line(str(path)))
    print(together.line(f"PublicTest, the {len(members)} averaged"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
