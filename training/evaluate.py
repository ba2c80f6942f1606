"""Evaluate an exported ONNX emotion model on a labelled FER-2013 split.

    emopipe-evaluate services/classify/models/emotion.onnx               # PublicTest (test/)
    emopipe-evaluate emotion.onnx --data fer2013.csv --split PrivateTest  # from the Kaggle CSV
    emopipe-evaluate new.onnx --against old.onnx   # also: faces only one of the two gets right

Prints accuracy, per-class recall and the confusion matrix, and saves the matrix as PNG.
The model is read and fed exactly as serving reads and feeds it
(``services.classify.model.EmotionModel``: labels and input size from its metadata, raw
0..255 pixels), with all CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from services.classify.model import EmotionModel
from training.data import DEFAULT_DATA, load_csv, load_folder
from training.paired import compare, format_paired
from training.plots import plot_confusion


@dataclass(frozen=True)
class Report:
    split: str
    faces: int
    accuracy: float
    recall: dict[str, float]
    confusion: list[list[int]]  # rows: true class, columns: predicted, in label order


def predict(model: EmotionModel, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Class probabilities for uint8 ``[N,S,S]`` faces, ``batch`` faces at a time."""
    if len(images) == 0:
        return model.predict(images)
    return np.concatenate([model.predict(images[i : i + batch]) for i in range(0, len(images), batch)])


def evaluate(model: EmotionModel, images: np.ndarray, labels: np.ndarray, split: str) -> Report:
    return summarize(predict(model, images).argmax(axis=1), labels, list(model.labels), split)


def summarize(predicted: np.ndarray, labels: np.ndarray, names: list[str], split: str) -> Report:
    """The report for predicted class ids ``predicted`` against true ``labels``."""
    confusion = np.zeros((len(names), len(names)), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    recall = {name: float(confusion[i, i] / max(confusion[i].sum(), 1)) for i, name in enumerate(names)}
    return Report(split, len(labels), float((predicted == labels).mean()), recall, confusion.tolist())


def load_split(data: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if data.suffix.lower() == ".csv":
        return load_csv(data)[split]
    folders = {"Training": "train", "PublicTest": "test"}
    if split not in folders:
        raise SystemExit(f"{data}: the image-folder copy has no {split}; pass the Kaggle CSV with --data")
    return load_folder(data / folders[split])


def format_report(report: Report, labels: list[str]) -> str:
    lines = [f"{report.split}: {report.faces} faces, accuracy {report.accuracy:.2%}", "per-class recall:"]
    lines += [f"  {name:<9} {report.recall[name]:.2%}" for name in labels]
    lines.append("confusion matrix (rows true, columns predicted): " + " ".join(f"{n[:5]:>6}" for n in labels))
    rows = zip(labels, report.confusion, strict=True)
    lines += [f"  {name:<9}" + "".join(f"{v:>7}" for v in row) for name, row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="image-folder root or Kaggle fer2013.csv")
    parser.add_argument("--split", default="PublicTest", choices=("Training", "PublicTest", "PrivateTest"))
    parser.add_argument("--confusion-png", type=Path, help="where to save the confusion matrix figure")
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    parser.add_argument(
        "--against", type=Path, help="a second model: print the paired comparison (training.paired) with it"
    )
    args = parser.parse_args(argv)
    for path in (args.model, args.against):
        if path is not None and not path.is_file():
            parser.error(f"{path}: model not found")
    model = EmotionModel(args.model, intra_op_threads=0)
    names = list(model.labels)
    other = None
    if args.against:
        other = EmotionModel(args.against, intra_op_threads=0)
        if other.labels != model.labels:
            raise SystemExit(f"{args.against}: labels {list(other.labels)} differ from {args.model}'s {names}")
    images, labels = load_split(args.data, args.split)
    predicted = predict(model, images).argmax(axis=1)
    report = summarize(predicted, labels, names, args.split)
    print(format_report(report, names))
    if other is not None:
        second = predict(other, images).argmax(axis=1)
        print(format_paired(compare(predicted, second, labels), str(args.model), str(args.against)))
    if args.confusion_png:
        plot_confusion(
            np.array(report.confusion), names, args.confusion_png, f"{args.split}: accuracy {report.accuracy:.2%}"
        )
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
