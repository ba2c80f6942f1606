"""``emopipe evaluate``: the pipeline's accuracy on labelled footage, end to end.

    emopipe evaluate LABELS.csv [--config FILE] [--json report.json] [--cameras 4]

``LABELS.csv`` has the columns ``file,label[,group]``; a file is a video (one label for the
clip) or a still image, its path relative to the CSV's folder. Labels are the model's seven
classes; common aliases are mapped (anger, sadness, fearful, surprised, disgusted, ...). A
row with another label (calm, contempt) is counted apart and not scored.

Every file goes through the real pipeline (``emopipe run``, lossless, every stage its own
process) with the config given:
- videos, ``--cameras`` at a time, each its own camera;
- stills as one folder source. Each still is padded (its size again around it, so the
  detector sees a whole head) and placed in one of four quarters of a 640x640 canvas in
  turn, one still a frame at 10 frames a second, so no face track runs from one still into
  the next. A still is a cut, so they are searched by the full-frame cascade
  (``detect.every_frame``), which finds a face on the frame it appears.

In every frame the subject is the largest face (in a still: in the still's quarter). A clip
is labelled three ways: the majority of its frames' labels, the majority of its smoothed
labels, and the largest of its mean probabilities. A clip with no face found counts as
wrong ("no face"). Frame accuracy counts every frame with a face. The report (Markdown on
stdout, JSON with ``--json``) gives those, the face-found rate, per-class recall and the
confusion matrix (by majority), each over all files and per group. Exit status: 0, or 2
when a file could not be read or analysed (named in the report; the others are reported).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deploy.measure import progress, run_config, run_pipeline
from emopipe import config as config_mod
from emopipe.api import PaddedStill
from emopipe.config import Config, SourceConfig
from emopipe.labels import EMOTIONS

ALIASES = {
    "anger": "angry",
    "angry": "angry",
    "mad": "angry",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
    "neutral": "neutral",
}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv", ".ts"}
NO_FACE = "no face"
CANVAS = 640  # stills: a square canvas of four quarters
STILLS_FPS = 10.0  # a quarter comes round every 0.4 s, longer than a track is held (0.3 s)


class LabelsError(ValueError):
    """A labels file that cannot be used at all; the message names it."""


@dataclass(frozen=True)
class Item:
    name: str  # as written in the CSV
    path: Path
    label: str  # one of the model's classes, or the CSV's own word (not scored)
    group: str

    @property
    def scored(self) -> bool:
        return self.label in EMOTIONS

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_SUFFIXES


@dataclass
class Clip:
    """What the pipeline said about one file's subject."""

    item: Item
    frames: int = 0
    with_face: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    smoothed: Counter[str] = field(default_factory=Counter)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros(len(EMOTIONS)))

    def add(self, face: dict[str, Any] | None) -> None:
        self.frames += 1
        if face is None:
            return
        self.with_face += 1
        self.labels[face["emotion"]] += 1
        self.smoothed[face["smoothed"]["emotion"]] += 1
        self.probabilities += np.asarray(face["probabilities"], dtype=np.float64)

    def answers(self) -> dict[str, str]:
        """The clip's label by each rule (ties: the model's label order)."""
        if not self.with_face:
            return {rule: NO_FACE for rule in RULES}
        return {
            "majority": _majority(self.labels),
            "smoothed": _majority(self.smoothed),
            "mean_probability": EMOTIONS[int(np.argmax(self.probabilities))],
        }


RULES = ("majority", "smoothed", "mean_probability")


def _majority(counts: Counter[str]) -> str:
    return max(EMOTIONS, key=lambda label: (counts[label], -EMOTIONS.index(label)))


def normalise_label(raw: str) -> str:
    word = raw.strip().lower()
    return ALIASES.get(word, word)


def read_labels(path: Path) -> list[Item]:
    """The rows of ``path`` (``file,label[,group]``)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"cannot read the labels file {path}: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in reader.fieldnames or []]
    if "file" not in columns or "label" not in columns:
        raise LabelsError(f"{path}: the first line must name the columns file,label[,group]; it has {columns}")
    items = []
    for number, row in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if not row.get("file") or not row.get("label"):
            raise LabelsError(f"{path}, line {number}: a row needs a file and a label, got {row}")
        group = row.get("group") or "all"
        items.append(Item(row["file"], path.parent / row["file"], normalise_label(row["label"]), group))
    if not items:
        raise LabelsError(f"{path} lists no files")
    return items


# ---------------------------------------------------------------- running the pipeline


def readable(item: Item) -> str | None:
    """Why ``item`` cannot be analysed, or None."""
    if not item.path.is_file():
        return "no such file"
    if item.is_video:
        cap = cv2.VideoCapture(str(item.path))
        try:
            ok, _ = cap.read() if cap.isOpened() else (False, None)
        finally:
            cap.release()
        return None if ok else "not a video OpenCV can decode"
    return None if cv2.imread(str(item.path), cv2.IMREAD_COLOR) is not None else "not an image OpenCV can read"


def pad_still(image: np.ndarray) -> np.ndarray:
    """A still made square and padded with its own size again around it (small ones scaled up
    to SMALL_STILL first), so the detector sees a whole head with room around it."""
    return PaddedStill.of(image).image


def still_canvas(image: np.ndarray, quarter: int) -> np.ndarray:
    """A 640x640 canvas with ``image`` padded (:func:`pad_still`) in ``quarter`` (0..3)."""
    padded = pad_still(image)
    slot = CANVAS // 2
    canvas = np.zeros((CANVAS, CANVAS, 3), np.uint8)
    y, x = divmod(quarter, 2)
    canvas[y * slot : (y + 1) * slot, x * slot : (x + 1) * slot] = cv2.resize(
        padded, (slot, slot), interpolation=cv2.INTER_AREA if padded.shape[0] > slot else cv2.INTER_CUBIC
    )
    return canvas


def _largest(faces: list[dict[str, Any]], inside: tuple[int, int, int, int] | None = None) -> dict[str, Any] | None:
    def centre_inside(face: dict[str, Any]) -> bool:
        if inside is None:
            return True
        x, y, w, h = face["box"]
        cx, cy = x + w / 2, y + h / 2
        return inside[0] <= cx < inside[0] + inside[2] and inside[1] <= cy < inside[1] + inside[3]

    candidates = [f for f in faces if centre_inside(f)]
    return max(candidates, key=lambda f: f["box"][2] * f["box"][3], default=None)


def run_stills(items: list[Item], cfg: Config, workdir: Path) -> list[Clip]:
    folder = workdir / "stills"
    folder.mkdir()
    for i, item in enumerate(items):
        image = cv2.imread(str(item.path), cv2.IMREAD_COLOR)
        if image is None:  # readable() read it a moment ago
            raise OSError(f"{item.path} can no longer be read")
        cv2.imwrite(str(folder / f"{i:07d}.png"), still_canvas(image, i % 4))
    stills_cfg = config_mod.replace(cfg, "detect", every_frame=True)
    stills_cfg = config_mod.replace(stills_cfg, "capture", folder_fps=STILLS_FPS)
    sources = [SourceConfig(id="stills", uri=str(folder))]
    progress(f"evaluate: {len(items)} stills through the pipeline")
    run_cfg = run_config(stills_cfg, sources, workdir, live=False)
    lines = {e["frame"]: e for e in run_pipeline(run_cfg, workdir, "stills")}
    clips = []
    slot = CANVAS // 2
    for i, item in enumerate(items):
        y, x = divmod(i % 4, 2)
        clip = Clip(item)
        clip.add(_largest(lines.get(i, {}).get("faces", []), (x * slot, y * slot, slot, slot)))
        clips.append(clip)
    return clips


def run_videos(items: list[Item], cfg: Config, workdir: Path) -> list[Clip]:
    sources = [SourceConfig(id=f"v{i}", uri=str(item.path.resolve())) for i, item in enumerate(items)]
    names = ", ".join(item.name for item in items)
    progress(f"evaluate: {names} through the pipeline")
    clips = {source.id: Clip(item) for source, item in zip(sources, items, strict=True)}
    lines = run_pipeline(run_config(cfg, sources, workdir, live=False), workdir, names)
    for event in sorted(lines, key=lambda e: (e["camera"], e["frame"])):
        clips[event["camera"]].add(_largest(event["faces"]))
    return list(clips.values())


# ---------------------------------------------------------------- the report


def summarise(clips: list[Clip]) -> dict[str, Any]:
    """Accuracies, face-found rate, per-class recall and confusion matrix of scored ``clips``."""
    scored = [c for c in clips if c.item.scored]
    answers = [c.answers() for c in scored]
    total = len(scored)
    columns = [*EMOTIONS, NO_FACE]
    matrix = [[0] * len(columns) for _ in EMOTIONS]
    for clip, answer in zip(scored, answers, strict=True):
        matrix[EMOTIONS.index(clip.item.label)][columns.index(answer["majority"])] += 1
    frames = sum(c.frames for c in scored)
    with_face = sum(c.with_face for c in scored)
    right_frames = sum(c.labels[c.item.label] for c in scored)
    per_class = {}
    for k, label in enumerate(EMOTIONS):
        count = sum(matrix[k])
        per_class[label] = {"clips": count, "recall": round(matrix[k][k] / count, 4) if count else None}
    return {
        "clips": total,
        "clip_accuracy": {
            rule: round(sum(a[rule] == c.item.label for c, a in zip(scored, answers, strict=True)) / total, 4)
            if total
            else None
            for rule in RULES
        },
        "frame_accuracy": round(right_frames / with_face, 4) if with_face else None,
        "frames": frames,
        "face_found_rate": round(with_face / frames, 4) if frames else None,
        "per_class": per_class,
        "confusion": {"rows": "true label", "columns": columns, "matrix": matrix},
    }


def report(clips: list[Clip], failed: dict[str, str], model: str) -> dict[str, Any]:
    groups = sorted({c.item.group for c in clips})
    unscored = Counter(c.item.label for c in clips if not c.item.scored)
    return {
        "model": model,
        "overall": summarise(clips),
        "groups": {g: summarise([c for c in clips if c.item.group == g]) for g in groups} if len(groups) > 1 else {},
        "unscored": {
            label: {"files": n, "said": dict(Counter(c.answers()["majority"] for c in clips if c.item.label == label))}
            for label, n in sorted(unscored.items())
        },
        "failed": failed,
        "files": [
            {
                "file": c.item.name,
                "label": c.item.label,
                "group": c.item.group,
                "frames": c.frames,
                "with_face": c.with_face,
                "frame_labels": dict(c.labels),
                **c.answers(),
            }
            for c in clips
        ],
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def markdown(rep: dict[str, Any]) -> str:
    out = [f"# emopipe evaluate: {rep['model']}", ""]
    sections = [("all files", rep["overall"])] + [(f"group {g}", s) for g, s in rep["groups"].items()]
    out += [
        "| files | scored clips | clip: majority | clip: smoothed | clip: mean probability | frames | faces found |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in sections:
        acc = s["clip_accuracy"]
        out.append(
            f"| {name} | {s['clips']} | {_pct(acc['majority'])} | {_pct(acc['smoothed'])} | "
            f"{_pct(acc['mean_probability'])} | {_pct(s['frame_accuracy'])} | {_pct(s['face_found_rate'])} |"
        )
    out += ["", "Per-class clip recall (majority):", ""]
    out += ["| | " + " | ".join(EMOTIONS) + " |", "|---|" + "---|" * len(EMOTIONS)]
    for name, s in sections:
        cells = [f"{_pct(s['per_class'][e]['recall'])} ({s['per_class'][e]['clips']})" for e in EMOTIONS]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    conf = rep["overall"]["confusion"]
    out += ["", "Confusion matrix, all files (rows: true label; columns: the clip's majority label):", ""]
    out += ["| | " + " | ".join(conf["columns"]) + " |", "|---|" + "---|" * len(conf["columns"])]
    for label, row in zip(EMOTIONS, conf["matrix"], strict=True):
        out.append(f"| {label} | " + " | ".join(str(n) for n in row) + " |")
    if rep["unscored"]:
        out += ["", "Not scored (labels outside the model's classes):", ""]
        for label, u in rep["unscored"].items():
            said = ", ".join(f"{k} {n}" for k, n in sorted(u["said"].items(), key=lambda kv: -kv[1]))
            out.append(f"- {label}: {u['files']} files; said {said}")
    if rep["failed"]:
        out += ["", "Could not be analysed:", ""]
        out += [f"- {name}: {why}" for name, why in rep["failed"].items()]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("labels", metavar="LABELS.csv", help="file,label[,group] rows; paths relative to the CSV")
    parser.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults)")
    parser.add_argument("--json", metavar="FILE", help="also write the report, with every file's answers, as JSON")
    parser.add_argument("--cameras", type=int, default=4, metavar="N", help="videos analysed at once (default 4)")


def evaluate(items: list[Item], cfg: Config, cameras: int) -> tuple[list[Clip], dict[str, str]]:
    failed: dict[str, str] = {}
    usable = []
    for item in items:
        why = readable(item)
        if why is None:
            usable.append(item)
        else:
            failed[item.name] = f"{why} ({item.path})"
    clips: list[Clip] = []
    stills = [i for i in usable if not i.is_video]
    videos = [i for i in usable if i.is_video]
    batches: list[list[Item]] = [videos[i : i + cameras] for i in range(0, len(videos), cameras)]
    for batch in ([stills] if stills else []) + batches:
        with tempfile.TemporaryDirectory(prefix="emopipe-evaluate-") as tmp:
            try:
                clips += run_stills(batch, cfg, Path(tmp)) if batch is stills else run_videos(batch, cfg, Path(tmp))
            except OSError as exc:
                for item in batch:
                    failed[item.name] = str(exc)
    order = {item.name: k for k, item in enumerate(items)}
    return sorted(clips, key=lambda c: order[c.item.name]), failed


def run(args: argparse.Namespace) -> int:
    if args.cameras < 1:
        print(f"emopipe evaluate: --cameras must be at least 1, got {args.cameras}", file=sys.stderr)
        return 2
    try:
        cfg = config_mod.load(args.config)
        items = read_labels(Path(args.labels))
    except (config_mod.ConfigError, LabelsError) as exc:
        print(f"emopipe evaluate: {exc}", file=sys.stderr)
        return 2
    clips, failed = evaluate(items, cfg, args.cameras)
    model = str(config_mod.resolve_path(cfg.classify.model))
    rep = report(clips, failed, model)
    print(markdown(rep), end="", flush=True)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(rep, indent=1) + "\n")
        except OSError as exc:
            print(f"emopipe evaluate: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 2 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emopipe evaluate", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
