"""Training recipes: every hyper-parameter of a run, stored beside its checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from training.augment import Augmentation


@dataclass(frozen=True)
class Recipe:
    architecture: str
    epochs: int
    batch_size: int = 128
    optimizer: str = "adam"  # "adam" (constant lr, reduced on plateau) or "adamw" (cosine)
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    teacher_weight: float = 0.0  # share of the targets taken from a teacher model (training.distill)
    early_stopping_patience: int = 0  # 0: off
    plateau_patience: int = 0  # 0: off; ReduceLROnPlateau on PublicTest accuracy
    augmentation: Augmentation = field(default_factory=Augmentation)
    seed: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        raw = json.loads(text)
        aug = raw.pop("augmentation")
        aug["erase_area"] = tuple(aug["erase_area"])
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"recipe has unknown key(s): {', '.join(sorted(unknown))}")
        return cls(augmentation=Augmentation(**aug), **raw)

    @classmethod
    def load(cls, path: Path) -> Recipe:
        return cls.from_json(path.read_text())

    def claim(self, out: Path) -> None:
        """Make ``out`` this recipe's run folder (``recipe.json``); a folder that holds a run of
        another recipe is refused, so a resume never mixes two."""
        out.mkdir(parents=True, exist_ok=True)
        saved = out / "recipe.json"
        if saved.is_file() and Recipe.load(saved) != self:
            raise SystemExit(f"{out} holds a run with a different recipe ({saved}); choose another --out")
        saved.write_text(self.to_json())


RECIPES: dict[str, Recipe] = {
    # The paper: Adam 1e-3, batch 128, up to 100 epochs, early stopping, reduce-LR-on-plateau,
    # rotation/shift/zoom augmentation. PublicTest accuracy swings by 1-3 points from epoch to
    # epoch at lr 1e-3, so early stopping waits 4 plateau periods: with 12 (2.4 periods) the
    # paper-bn run stopped 2 epochs after its second halving, its train accuracy still rising.
    "paper": Recipe(
        architecture="paper",
        epochs=100,
        early_stopping_patience=20,
        plateau_patience=5,
        augmentation=Augmentation(rotation_deg=10, shift=0.1, zoom=0.1),
    ),
    # The shipped default: batch-normed VGG-style net, AdamW with warm-up and cosine decay,
    # label smoothing, flips and random erasing on top of the paper's augmentation.
    "emonet": Recipe(
        architecture="emonet",
        epochs=16,
        optimizer="adamw",
        learning_rate=2e-3,
        weight_decay=0.01,
        warmup_epochs=1,
        label_smoothing=0.1,
        augmentation=Augmentation(rotation_deg=10, shift=0.1, zoom=0.1, flip=True, erase_prob=0.1),
    ),
}

# The paper's recipe with one change: batch norm between each conv or dense layer and its ReLU
# (the plain net underfits under the paper's dropout; see the model card).
RECIPES["paper-bn"] = replace(RECIPES["paper"], architecture="paper-bn")
# The paper's recipe on the paper's network with dropout at the low end of its 0.25-0.4 (both
# runs above stopped underfitting: train accuracy 58% and 63% against the paper's 78.9%);
# 100 epochs: 80 minutes on a 2-core CPU with AVX-512 (paper-light: 63.25%, see the model
# card), about 4 hours on the slower hosts of earlier sessions (132-145 s an epoch).
RECIPES["paper-light"] = replace(RECIPES["paper"], architecture="paper-light")
# With batch norm as well, from the first epoch: 63.50% (71 epochs, last five averaged; card).
RECIPES["paper-bn-light"] = replace(RECIPES["paper"], architecture="paper-bn-light")
# A second stage for the CPU: paper-bn's weights go on training with the dropout lowered to
# 0.25 (paper-bn-light) at the learning rate paper-bn had reached (2.5e-4), a fixed 24 epochs
# (no early stopping), the last five kept and averaged with training.average:
#   emopipe-train --recipe paper-bn-light-tune --init runs/paper-bn/best.keras --snapshots-from 20
RECIPES["paper-bn-light-tune"] = replace(
    RECIPES["paper-bn-light"], epochs=24, learning_rate=2.5e-4, early_stopping_patience=0, plateau_patience=3
)

# A second, gentler cosine cycle (a warm restart) from the weights of an emonet run:
#   emopipe-train --recipe emonet-refine --init runs/emonet/best.keras
RECIPES["emonet-refine"] = replace(RECIPES["emonet"], epochs=12, learning_rate=1e-3, warmup_epochs=0)
# A short, low-peak cycle that stays in the basin of the weights it starts from; its later
# epochs are kept (--snapshots-from) and averaged with training.average:
#   emopipe-train --recipe emonet-polish --init <averaged.keras> --snapshots-from 8
RECIPES["emonet-polish"] = replace(RECIPES["emonet"], epochs=18, learning_rate=4e-4, warmup_epochs=0)
# Fine-tuning emonet-slim after training.prune has narrowed a trained emonet into it:
#   emopipe-train --recipe emonet-slim-tune --init <pruned.keras> --snapshots-from 9
RECIPES["emonet-slim-tune"] = replace(RECIPES["emonet-polish"], architecture="emonet-slim", epochs=16)
# Distilling a trained emonet's flip-averaged predictions into emonet-slim (training.distill);
# the teacher's soft targets replace label smoothing (the shipped model, see its card):
#   emopipe-train --recipe emonet-slim-distill --teacher runs/emonet-teacher.onnx \
#       --init runs/emonet-slim/averaged.keras --snapshots-from 21
RECIPES["emonet-slim-distill"] = replace(
    RECIPES["emonet-slim-tune"], epochs=30, label_smoothing=0.0, teacher_weight=0.6
)

# Long schedules for a CUDA GPU machine (KERAS_BACKEND=torch; see the model card): batches of
# 256 (the PyTorch backend launches one kernel per operation, so small batches leave the GPU
# waiting), stronger augmentation. ``emonet-wide`` is a teacher, not a model to ship.
_GPU_AUGMENTATION = Augmentation(rotation_deg=15, shift=0.12, zoom=0.15, flip=True, erase_prob=0.5)
RECIPES["emonet-wide"] = replace(
    RECIPES["emonet"],
    architecture="emonet-wide",
    epochs=50,
    batch_size=256,
    learning_rate=3e-3,
    weight_decay=0.05,
    warmup_epochs=3,
    augmentation=_GPU_AUGMENTATION,
)
RECIPES["emonet-slim-long"] = replace(
    RECIPES["emonet-wide"],
    architecture="emonet-slim",
    epochs=55,
    weight_decay=0.01,
    augmentation=replace(_GPU_AUGMENTATION, erase_prob=0.25),
)
# emonet-slim-long taught by a trained emonet-wide (a .keras teacher, run on the GPU), from
# emonet-slim-long's weights, on a lower-peak cycle:
#   emopipe-train --recipe emonet-slim-kd --teacher runs/emonet-wide/best.keras \
#       --init runs/emonet-slim-long/best.keras --snapshots-from 36
RECIPES["emonet-slim-kd"] = replace(
    RECIPES["emonet-slim-long"],
    epochs=40,
    learning_rate=1.5e-3,
    warmup_epochs=1,
    label_smoothing=0.0,
    teacher_weight=0.7,
)

# A wider student distilled from emonet-wide from scratch, to ship as one int8 pass (GPU):
#   python -m training.half runs/emonet-wide/best.keras .gpu/emonet-wide-fp16.keras   # here
#   emopipe-train --recipe emonet-mid-kd --data .gpu/fer2013.npz \
#       --teacher .gpu/emonet-wide-fp16.keras --snapshots-from 56                      # there
RECIPES["emonet-mid-kd"] = replace(
    RECIPES["emonet-slim-long"], architecture="emonet-mid", epochs=60, label_smoothing=0.0, teacher_weight=0.7
)


def recipe(name: str, **overrides: Any) -> Recipe:
    try:
        base = RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r} (choose from {', '.join(RECIPES)})") from None
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
