"""Train an emotion CNN on FER-2013 Training, validating on PublicTest.

    emopipe-train --recipe paper                  # the paper's baseline
    emopipe-train --recipe emonet-slim-kd --teacher training/checkpoints/emonet-wide-fp16.keras \\
        --init training/checkpoints/emonet-slim.weights.h5 --epochs 10 --snapshots-from 6

(training/README.md has the sequence that made the shipped model.) Each epoch prints one
progress line and writes, under ``--out`` (default ``runs/<recipe>``): ``last.keras`` (model
and optimizer state, to resume), ``best.keras`` (best PublicTest accuracy so far),
``recipe.json``, ``history.csv`` and ``curves.png`` (with ``--snapshots-from``, also
``epochs/epoch-NN.keras``). Run the same command again to resume an interrupted run.
Works on any Keras 3 backend: TensorFlow on a CPU, or ``KERAS_BACKEND=torch`` on a CUDA GPU
(PyTorch finds the GPU itself); checkpoints saved under one load under the other.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from emopipe.labels import EMOTIONS, NUM_CLASSES
from services.classify.model import PREPROCESSING
from training.augment import Augmentation, augment_batch
from training.callbacks import (
    EpochArtifacts,
    ResumableEarlyStopping,
    ResumableReduceLROnPlateau,
    Snapshots,
    StopAfter,
    StopBefore,
)
from training.data import DEFAULT_CACHE, DEFAULT_DATA, Split, training_splits
from training.distill import Teacher, Teachers, soft_targets
from training.models import build, load_checkpoint
from training.recipes import RECIPES, Recipe, recipe

log = logging.getLogger("emopipe.train")

REPO = Path(__file__).resolve().parents[1]


class FaceBatches(keras.utils.PyDataset):
    """Shuffled, freshly augmented training batches of raw 0..255 float32 pixels."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        aug: Augmentation,
        seed: int,
        first_epoch: int = 0,
        teacher: Teacher | Teachers | None = None,
        teacher_weight: float = 0.0,
        clean_targets: np.ndarray | None = None,
        class_weights: np.ndarray | None = None,
        preprocessing: str = "none",
    ) -> None:
        """``clean_targets``: the teacher's ``[N,7]`` answers for the un-augmented faces, used
        instead of asking ``teacher`` about each augmented batch; ``class_weights``: ``[7]``
        loss weights by label (the batches then carry sample weights)."""
        super().__init__()
        self.images, self.labels = split
        self.batch_size = batch_size
        self.aug = aug
        self.teacher = teacher
        self.teacher_weight = teacher_weight
        self.clean_targets = clean_targets
        self.class_weights = class_weights
        self.prepare = PREPROCESSING[preprocessing]
        # A resumed run draws new orders and augmentations; seeded by ``seed`` alone it would
        # replay the exact batches of the run's first epochs, which the model has already seen.
        self.rng = np.random.default_rng(seed if first_epoch == 0 else (seed, first_epoch))
        self.order = self.rng.permutation(len(self.labels))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        picked = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images = augment_batch(self.images[picked], self.rng, self.aug)
        labels = self.labels[picked]
        if self.clean_targets is not None:
            targets = soft_targets(labels, self.clean_targets[picked], self.teacher_weight)
        elif self.teacher is None:
            targets = keras.utils.to_categorical(labels, NUM_CLASSES)
        else:
            targets = soft_targets(labels, self.teacher.probabilities(images), self.teacher_weight)
        pixels = self.prepare(images)[..., None].astype("float32")
        if self.class_weights is None:
            return pixels, targets
        return pixels, targets, self.class_weights[labels].astype("float32")

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.labels))


def class_weights(labels: np.ndarray, power: float) -> np.ndarray | None:
    """``[7]`` loss weights ``(largest count / count) ** power``, scaled so that the mean weight
    over ``labels`` is 1 (the learning rate keeps its meaning); None for power 0."""
    if power == 0:
        return None
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    if (counts == 0).any():
        missing = [EMOTIONS[k] for k in np.flatnonzero(counts == 0)]
        raise ValueError(f"no training faces of {', '.join(missing)}: cannot weigh the classes")
    weights = (counts.max() / counts) ** power
    return (weights / (weights[labels].mean())).astype(np.float32)


def clean_teacher_targets(teachers: Sequence[Path], images: np.ndarray, cache: Path) -> np.ndarray:
    """The teachers' mean flip-averaged ``[N,7]`` answers for the un-augmented ``images``,
    cached under ``cache`` by the teachers' and the faces' digests (one pass per data set)."""
    digest = hashlib.sha256(images.tobytes())
    for path in teachers:
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    file = cache / f"teacher-{digest.hexdigest()[:16]}.npy"
    if file.is_file():
        log.info("teacher answers for the clean faces from %s", file)
        return np.load(file)
    log.info("teacher answers for %d clean faces (once; cached in %s)", len(images), file)
    teacher = Teachers(teachers)
    probs = np.concatenate([teacher.probabilities(images[i : i + 512]) for i in range(0, len(images), 512)])
    cache.mkdir(parents=True, exist_ok=True)
    np.save(file, probs)
    return probs


def _optimizer(r: Recipe, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    if r.optimizer == "adam":
        return keras.optimizers.Adam(r.learning_rate)
    if r.optimizer == "adamw":
        return keras.optimizers.AdamW(cosine_schedule(r, steps_per_epoch), weight_decay=r.weight_decay)
    raise ValueError(f"unknown optimizer {r.optimizer!r} in recipe")


def cosine_schedule(r: Recipe, steps_per_epoch: int) -> keras.optimizers.schedules.CosineDecay:
    """The ``adamw`` recipes' learning rate: warm-up from 1/100 of the peak, then cosine to 0."""
    total = r.epochs * steps_per_epoch
    warmup = min(r.warmup_epochs * steps_per_epoch, total // 2)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=r.learning_rate / 100,
        decay_steps=total - warmup,
        warmup_target=r.learning_rate,
        warmup_steps=warmup,
    )


def _history(out: Path) -> list[dict[str, str]]:
    path = out / "history.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _model(r: Recipe, out: Path, steps_per_epoch: int, init: Path | None) -> tuple[keras.Model, int]:
    """A fresh compiled model (from ``init``'s weights if given), or the checkpoint of an
    interrupted run and its next epoch."""
    last = out / "last.keras"
    done = len(_history(out))
    if last.is_file() and done:
        log.info("resuming %s after epoch %d", last, done)
        return load_checkpoint(last), done
    model = build(r.architecture)
    if init is not None:
        log.info("starting from the weights of %s", init)
        model.load_weights(init)
    model.compile(
        optimizer=_optimizer(r, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=r.label_smoothing),
        metrics=["accuracy"],
    )
    return model, 0


def _callbacks(r: Recipe, out: Path, model: keras.Model) -> tuple[list[keras.callbacks.Callback], bool]:
    """The run's callbacks, with plateau and early-stopping patience carried over from the
    epochs already in ``history.csv``; and whether those epochs had already stopped the run."""
    past = [float(row["val_accuracy"]) for row in _history(out)]
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
        keras.callbacks.ModelCheckpoint(str(out / "last.keras")),
        keras.callbacks.ModelCheckpoint(
            str(out / "best.keras"),
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
            initial_value_threshold=max(past, default=None),
        ),
        EpochArtifacts(out),
    ]
    stopped = False
    if r.plateau_patience:
        plateau = ResumableReduceLROnPlateau(
            monitor="val_accuracy", mode="max", factor=0.5, patience=r.plateau_patience, min_lr=1e-5
        )
        _, replayed_lr = plateau.replay(past, r.learning_rate)
        current_lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        if past and not math.isclose(replayed_lr, current_lr, rel_tol=1e-3):
            log.warning(
                "the checkpoint's learning rate %.3g differs from %.3g, what the plateau rule gives for "
                "this history (an invocation before patience carried over resumes); keeping %.3g",
                current_lr,
                replayed_lr,
                current_lr,
            )
        callbacks.append(plateau)
    if r.early_stopping_patience:
        early = ResumableEarlyStopping(monitor="val_accuracy", mode="max", patience=r.early_stopping_patience)
        stopped, _ = early.replay(past, r.learning_rate)
        callbacks.append(early)
    return callbacks, stopped


def check_teachers(r: Recipe, teachers: Sequence[Path]) -> None:
    """A recipe with a teacher weight needs teachers, and one without refuses them."""
    if (not teachers) != (r.teacher_weight == 0):
        raise SystemExit(
            f"recipe with teacher_weight {r.teacher_weight} needs a teacher model (--teacher)"
            if not teachers
            else f"--teacher {', '.join(map(str, teachers))} given, but the recipe's teacher_weight is 0"
        )


def train(
    r: Recipe,
    data: Path,
    out: Path,
    cache: Path,
    limit: int = 0,
    stop_after: int = 0,
    init: Path | None = None,
    snapshots_from: int = 0,
    teachers: Sequence[Path] = (),
    time_limit: float = 0.0,
) -> keras.Model:
    check_teachers(r, teachers)
    r.claim(out)
    keras.utils.set_random_seed(r.seed)
    train_split, val_split = training_splits(data, cache, limit, r.seed)
    model, initial_epoch = _model(r, out, math.ceil(len(train_split[1]) / r.batch_size), init)
    if initial_epoch >= r.epochs:
        log.info("%s already finished %d epochs", out, initial_epoch)
        return model
    log.info(
        "training %s (%d parameters) on %d faces, validating on %d PublicTest faces",
        r.architecture,
        model.count_params(),
        len(train_split[1]),
        len(val_split[1]),
    )
    callbacks, stopped = _callbacks(r, out, model)
    if stopped:
        log.info("%s stopped early: no better PublicTest accuracy for %d epochs", out, r.early_stopping_patience)
        return model
    if stop_after:
        callbacks.append(StopAfter(stop_after))
    if time_limit:
        callbacks.append(StopBefore(time_limit))
    clean = r.teacher_targets == "clean" and bool(teachers)
    batches = FaceBatches(
        train_split,
        r.batch_size,
        r.augmentation,
        r.seed,
        initial_epoch,
        Teachers(teachers) if teachers and not clean else None,
        r.teacher_weight,
        clean_teacher_targets(teachers, train_split[0], cache) if clean else None,
        class_weights(train_split[1], r.class_weight_power),
        r.preprocessing,
    )
    val_faces = PREPROCESSING[r.preprocessing](val_split[0])
    val = (val_faces[..., None].astype("float32"), keras.utils.to_categorical(val_split[1], NUM_CLASSES))
    if snapshots_from:
        callbacks.append(Snapshots(out / "epochs", snapshots_from))
    model.fit(
        batches, validation_data=val, epochs=r.epochs, initial_epoch=initial_epoch, callbacks=callbacks, verbose=2
    )
    return model


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="image-folder root (train/, test/) or Kaggle fer2013.csv"
    )
    parser.add_argument("--out", type=Path, help="run folder (default: runs/<recipe>)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the decoded data set is cached")
    parser.add_argument("--epochs", type=int, help="override the recipe's epoch count (the schedule stretches)")
    parser.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    parser.add_argument(
        "--limit", type=int, default=0, help="use only this many train and PublicTest faces (smoke runs)"
    )
    parser.add_argument("--stop-after", type=int, default=0, help="stop this invocation after N epochs (resume later)")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop this invocation after the last epoch that ends within SECONDS (resume later)",
    )
    parser.add_argument(
        "--init",
        type=Path,
        help="start from the weights of this .keras checkpoint or .weights.h5 file (same architecture)",
    )
    parser.add_argument(
        "--snapshots-from",
        type=int,
        default=0,
        metavar="EPOCH",
        help="also keep epochs/epoch-NN.keras from this epoch on, to average with training.average",
    )
    parser.add_argument(
        "--teacher",
        type=Path,
        action="append",
        default=[],
        help="a .keras checkpoint or exported .onnx model whose flip-averaged predictions make part of "
        "the targets (recipes with teacher_weight > 0; also on resume); repeat it to be taught by the "
        "mean of several teachers",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="override the recipe's seed (initial weights, batch order, augmentation): a second, "
        "independent run of the same recipe, in its own --out",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for teacher in args.teacher:
        if not teacher.is_file():
            parser.error(f"--teacher {teacher}: model not found")
    if args.init is not None and not args.init.is_file():
        parser.error(f"--init {args.init}: checkpoint not found")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    r = recipe(args.recipe, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    train(
        r,
        args.data,
        args.out or REPO / "runs" / args.recipe,
        args.cache,
        limit=args.limit,
        stop_after=args.stop_after,
        init=args.init,
        snapshots_from=args.snapshots_from,
        teachers=args.teacher,
        time_limit=args.time_limit,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
