"""Training recipes: every hyper-parameter of a run, stored beside its checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from services.classify.model import PREPROCESSING
from training.augment import Augmentation, Camera


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
    # "augmented": the teacher answers each augmented face; "clean": it answers each training face
    # once, un-augmented, and every augmented view of the face learns that answer (what the face
    # shows does not change with the camera; and one teacher pass instead of one per epoch)
    teacher_targets: str = "augmented"
    # each face's loss weighted by (largest class count / its class count) ** power: 0 = off,
    # 0.5 gives FER-2013's disgust (1.5% of Training) 4.1 times a happy face's weight
    class_weight_power: float = 0.0
    # what is done to every face before the network, in training and (the exported model's
    # ``preprocessing`` metadata) in serving: services.classify.model.PREPROCESSING
    preprocessing: str = "none"
    early_stopping_patience: int = 0  # 0: off
    plateau_patience: int = 0  # 0: off; ReduceLROnPlateau on PublicTest accuracy
    augmentation: Augmentation = field(default_factory=Augmentation)
    seed: int = 1

    def __post_init__(self) -> None:
        if self.teacher_targets not in ("augmented", "clean"):
            raise ValueError(f"teacher_targets is {self.teacher_targets!r}: choose 'augmented' or 'clean'")
        if self.preprocessing not in PREPROCESSING:
            raise ValueError(f"preprocessing is {self.preprocessing!r}: choose from {', '.join(PREPROCESSING)}")
        if self.class_weight_power < 0:
            raise ValueError(f"class_weight_power is {self.class_weight_power}: it must be >= 0")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        raw = json.loads(text)
        aug = raw.pop("augmentation")
        aug["erase_area"] = tuple(aug["erase_area"])
        cam: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in aug.pop("camera", {}).items()}
        aug["camera"] = Camera(**cam)
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


# The paper's baseline, the shipped model's three recipes, and nothing else: the recipes tried
# on the way (paper-bn, paper-light, emonet, emonet-refine, emonet-slim-distill, emonet-mid-kd,
# ...) and what they measured are in training/EXPERIMENTS.md.
RECIPES: dict[str, Recipe] = {
    # The paper: Adam 1e-3, batch 128, up to 100 epochs, early stopping, reduce-LR-on-plateau,
    # rotation/shift/zoom augmentation. PublicTest accuracy swings by 1-3 points from epoch to
    # epoch at lr 1e-3, so early stopping waits 4 plateau periods: with 12 (2.4 periods) a
    # batch-normed variant stopped 2 epochs after its second halving, train accuracy still rising.
    "paper": Recipe(
        architecture="paper",
        epochs=100,
        early_stopping_patience=20,
        plateau_patience=5,
        augmentation=Augmentation(rotation_deg=10, shift=0.1, zoom=0.1),
    ),
}

# The shipped model's recipes (its card, *Training recipe*): AdamW, warm-up then cosine decay to
# 0, batches of 256 (on a GPU under KERAS_BACKEND=torch small batches leave it waiting), flips
# and random erasing on top of the paper's augmentation. ``emonet-wide`` is the teacher, not a
# model to ship.
_AUGMENTATION = Augmentation(rotation_deg=15, shift=0.12, zoom=0.15, flip=True, erase_prob=0.5)
RECIPES["emonet-wide"] = Recipe(
    architecture="emonet-wide",
    epochs=50,
    batch_size=256,
    optimizer="adamw",
    learning_rate=3e-3,
    weight_decay=0.05,
    warmup_epochs=3,
    label_smoothing=0.1,
    augmentation=_AUGMENTATION,
)
# The shipped network trained alone, from scratch: the student's starting point.
RECIPES["emonet-slim-long"] = replace(
    RECIPES["emonet-wide"],
    architecture="emonet-slim",
    epochs=55,
    weight_decay=0.01,
    augmentation=replace(_AUGMENTATION, erase_prob=0.25),
)
# emonet-slim-long taught by a trained emonet-wide (training.distill), from emonet-slim-long's
# weights, on a lower-peak cycle; the teacher's soft targets replace label smoothing. Run four
# times for the shipped weights (40, 40, 20 and 10 epochs, each cycle from the previous one's
# last five epochs averaged: --snapshots-from, training.average; training/README.md):
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

# For real cameras rather than FER-2013 (issue: right on real faces): the shipped student taught
# on with what cameras do to a face (light, blur, resolution, JPEG, noise: training.augment.Camera)
# on top of the geometry, the classes weighed, the teacher's answer for each face taken from the
# clean face, every face histogram-equalised (in serving too: the model's metadata says so).
# From the committed weights, the teacher exported to ONNX first (onnxruntime runs it 3x faster
# than Keras on a CPU):
#   emopipe-export training/checkpoints/emonet-wide-fp16.keras runs/emonet-wide.onnx
#   emopipe-train --recipe emonet-slim-cam --teacher runs/emonet-wide.onnx \
#       --init training/checkpoints/emonet-slim.weights.h5 --snapshots-from 1
RECIPES["emonet-slim-cam"] = replace(
    RECIPES["emonet-slim-kd"],
    epochs=12,
    learning_rate=1e-3,
    teacher_weight=0.5,
    teacher_targets="clean",
    class_weight_power=0.5,
    preprocessing="equalize_hist",
    augmentation=replace(_AUGMENTATION, erase_prob=0.25, camera=Camera(prob=0.8)),
)


def recipe(name: str, **overrides: Any) -> Recipe:
    try:
        base = RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r} (choose from {', '.join(RECIPES)})") from None
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
