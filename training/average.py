"""Average the weights of several checkpoints of one run (stochastic weight averaging).

    python -m training.average runs/x/epochs/epoch-2*.keras --out runs/x/averaged.keras

The checkpoints must share an architecture (epochs near the end of one run, where the
weights lie in one basin). Batch-norm statistics of averaged weights are not the average of
the statistics, so they are measured again (unless ``--no-recalibrate``): the averaged
model runs over FER-2013 Training in training mode, without augmentation, and each batch-norm
layer's moving mean and variance become the mean of its per-batch statistics.

Given a single checkpoint it only re-measures batch norm. That is worth doing for any run
trained under augmentation: its moving statistics followed rotated, shifted and zoomed faces,
not the plain crops served at test time (+1.2 points PublicTest for a paper-bn-light-tune
epoch, +0.3 for the emonet-wide teacher; see the model card).

It prints the result's PublicTest accuracy, one pass and flip-averaged.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import keras
import numpy as np

from services.classify.model import PREPROCESSING
from training.data import DEFAULT_CACHE, DEFAULT_DATA, cached_splits
from training.flip import flip_averaged
from training.models import load_checkpoint

log = logging.getLogger("emopipe.average")


def average_weights(models: list[keras.Model]) -> keras.Model:
    """The first model, its weights replaced by the element-wise mean over ``models``."""
    first = models[0]
    for other in models[1:]:
        if [w.shape for w in other.weights] != [w.shape for w in first.weights]:
            raise ValueError(f"{other.name} does not have the architecture of {first.name}")
    stacked = zip(*(m.get_weights() for m in models), strict=True)
    first.set_weights([np.mean(values, axis=0) for values in stacked])
    return first


def recalibrate_batch_norm(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> int:
    """Re-estimate every batch-norm layer's moving statistics on ``images`` (raw ``[N,S,S]``
    pixels): the cumulative mean of the per-batch statistics. Returns the batches run."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        return 0
    momenta = [layer.momentum for layer in norms]
    batches = 0
    try:
        for start in range(0, len(images) - batch_size + 1, batch_size):  # equal-sized batches only
            for layer in norms:
                layer.momentum = batches / (batches + 1)  # running mean over the batches seen
            model(images[start : start + batch_size, ..., None].astype("float32"), training=True)
            batches += 1
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
    if batches == 0:
        raise ValueError(f"need at least {batch_size} images to recalibrate batch norm, got {len(images)}")
    return batches


def recalibrate_on_training(model: keras.Model, data: Path, cache: Path, preprocessing: str = "none") -> None:
    """``recalibrate_batch_norm`` over FER-2013 Training (from ``data``, with the model's
    ``preprocessing``), in a fixed shuffled order."""
    (images, _), _ = cached_splits(data, cache)
    images = PREPROCESSING[preprocessing](images)
    shuffled = images[np.random.default_rng(0).permutation(len(images))]
    log.info("recalibrated batch norm over %d batches of Training", recalibrate_batch_norm(model, shuffled))


def accuracy(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The model's accuracy on raw 0..255 faces: one pass, and each face's probabilities
    averaged with its mirror image's (what ``emopipe-export --flip-average`` builds)."""

    def predict(faces: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(faces[..., None].astype("float32"), batch_size=256, verbose=0))

    plain, flipped = flip_averaged(predict, images)
    return float(np.mean(plain.argmax(1) == labels)), float(np.mean(flipped.argmax(1) == labels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", type=Path, nargs="+", help=".keras checkpoints of one architecture")
    parser.add_argument("--out", type=Path, required=True, help="where to write the averaged .keras model")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="image-folder root or Kaggle CSV")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the packed data set is kept")
    parser.add_argument("--no-recalibrate", dest="recalibrate", action="store_false")
    parser.add_argument(
        "--preprocessing", choices=sorted(PREPROCESSING), default="none", help="the recipe's preprocessing"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    missing = [str(p) for p in args.checkpoints if not p.is_file()]
    if missing:
        parser.error(f"checkpoint(s) not found: {', '.join(missing)}")
    model = average_weights([load_checkpoint(p) for p in args.checkpoints])
    log.info("averaged %d checkpoints", len(args.checkpoints))
    if args.recalibrate:
        recalibrate_on_training(model, args.data, args.cache, args.preprocessing)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    _, (images, labels) = cached_splits(args.data, args.cache)
    single, flipped = accuracy(model, PREPROCESSING[args.preprocessing](images), labels)
    print(f"wrote {args.out}: PublicTest accuracy {single:.2%} one pass, {flipped:.2%} flip-averaged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
