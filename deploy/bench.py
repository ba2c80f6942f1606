"""``emopipe bench``: the paper's single-process loop, then the pipeline on N cameras, in one run.

    emopipe bench [--cameras N] [--source VIDEO] [--size WxH] [--seconds S] [--markdown FILE] [--smoke]
                  [--workers detect|classify=N ...] [--every-frame]

1. The paper's loop (read, full-frame Haar, the CNN on each face, draw), as fast as it goes.
2. ``emopipe run --realtime`` with N copies of the video as cameras, played at their frame
   rate. Latency is taken from outside: the moment each JSON line appears in the events
   file minus its capture ``ts``. Per camera: processed FPS, latency p50/p95/p99; per
   stage: CPU % and RSS (start and end of the measured window); drops by reason from
   every stage's ``/metrics``.
3. Detection recall against the full-frame cascade on every frame (scale 1.1, 5 neighbours,
   40x40), every frame in order as in lossless mode, with the config's scheduled
   detection; and label flicker (label changes per track-second), raw against smoothed.
4. File analysis: ``emopipe run --source VIDEO --events FILE`` on one copy of the video,
   lossless (every frame, as fast as the pipeline goes), timed from the command's start to
   its exit (start-up included): the speed as a multiple of real time.

With ``--workers``, step 2 runs twice in the same command: one worker per stage, then the
workers asked for, and the report gives the ratio of their throughputs. ``--every-frame``
makes detection the bottleneck the paper has (the full-frame cascade on every frame, one
camera at a time per worker: ``detect.threads = 1``), which is what more workers are for.

The default video is the carphone clip scaled to 640x480 at 30 FPS, played forwards and
backwards twice (16 s, so tracks last longer than the 4 s clip). ``--size 1280x720`` measures
every step on the video scaled to that size (to cover it, centre-cropped: faces keep their
shape), written once (the bench clip's copy is cached beside it, a ``--source`` one is not).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import psutil

from deploy import measure
from deploy.measure import (
    bench_config,
    bench_video,
    frames_of,
    machine,
    progress,
    scaled_video,
    video_fps,
    video_size,
)
from deploy.recall import TrackingResult, measure_tracking, parse_size
from emopipe import config as config_mod
from emopipe import sample_video, topology
from emopipe.config import Config
from emopipe.metrics import worker_ports
from emopipe.redact import redact
from services.classify.model import EmotionModel
from services.detect.detector import FaceDetector
from services.detect.shrink import copy_size

STAGES = topology.names()
_DROPPED = re.compile(r'^emopipe_frames_dropped_total\{reason="([a-z_]+)",stage="([a-z]+)"\} ([0-9.e+]+)$')


# ---------------------------------------------------------------- 1. the paper's loop


def paper_loop(video: Path, model: EmotionModel, cfg: Config, seconds: float) -> float:
    """Frames per second of read -> full-frame Haar -> CNN per face -> draw, one process
    (OpenCV with its default threads, as the paper's code runs)."""
    detector = FaceDetector(cfg.detect, model.input_size)
    cap = cv2.VideoCapture(str(video))
    frames = 0
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            ok, image = cap.read()
            if not ok:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            boxes, crops = detector.detect(image)
            for box, crop in zip(boxes, crops, strict=True):
                probs = model.predict(crop[None])[0]
                label = model.labels[int(np.argmax(probs))]
                cv2.rectangle(image, (box.x, box.y), (box.x + box.w, box.y + box.h), (0, 220, 0), 2)
                cv2.putText(image, label, (box.x, box.y - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 220, 0), 1)
            frames += 1
            progress(f"paper loop: {frames} frames, {frames / (time.perf_counter() - start):.1f} FPS")
    finally:
        cap.release()
    return frames / (time.perf_counter() - start)


# ---------------------------------------------------------------- 2. the pipeline


@dataclass
class StageUsage:
    cpu_percent: float = 0.0
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0


@dataclass
class PipelineResult:
    cameras: list[str]
    seconds: float
    lines: dict[str, int]
    latencies: dict[str, list[float]]
    drops: dict[str, float]  # "stage/reason" -> count
    usage: dict[str, StageUsage] = field(default_factory=dict)

    def fps(self, camera: str) -> float:
        return self.lines[camera] / self.seconds

    @property
    def total(self) -> float:
        return sum(self.fps(c) for c in self.cameras)


def run_pipeline(cfg: Config, warmup_s: float, seconds: float, workdir: Path) -> PipelineResult:
    config_path = workdir / "bench.toml"
    config_path.write_text(config_mod.to_toml(cfg))
    events = Path(cfg.sink.events)
    events.write_text("")
    log = (workdir / "pipeline.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.launcher", "run", "--config", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    cameras = cfg.cameras
    latencies: dict[str, list[float]] = {c: [] for c in cameras}
    try:
        with events.open() as fh:
            _follow(fh, proc, time.monotonic() + warmup_s, None, "warming up")
            stages = stage_processes(proc, cfg)
            for p in stages.values():
                p.cpu_percent(None)
            rss_start = {s: p.memory_info().rss / 2**20 for s, p in stages.items()}
            begin = time.monotonic()
            _follow(fh, proc, begin + seconds, latencies, "measuring")
            elapsed = time.monotonic() - begin
            usage = {
                s: StageUsage(p.cpu_percent(None), rss_start[s], p.memory_info().rss / 2**20) for s, p in stages.items()
            }
        drops = scrape_drops(cfg)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return PipelineResult(cameras, elapsed, {c: len(v) for c, v in latencies.items()}, latencies, drops, usage)


def _follow(fh, proc: subprocess.Popen, until: float, latencies: dict[str, list[float]] | None, what: str) -> None:  # type: ignore[type-arg,no-untyped-def]
    """Read the events file as it grows until ``until``; each new line's arrival minus its ts."""
    pending = ""
    count = 0
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise RuntimeError(f"the pipeline exited with code {proc.returncode} while {what}")
        chunk = fh.read()
        now = time.time()
        if not chunk:
            time.sleep(0.005)
            continue
        pending += chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            event = json.loads(line)
            count += 1
            if latencies is not None and event["camera"] in latencies:
                latencies[event["camera"]].append(now - event["ts"])
        progress(f"pipeline {what}: {count} lines, {until - time.monotonic():.0f} s left")


def stage_processes(launcher: subprocess.Popen, cfg: Config) -> dict[str, psutil.Process]:  # type: ignore[type-arg]
    """Each stage's processes: ``detect``, ``detect#2``, ... for the workers of a pooled stage."""
    expected = len(STAGES) - 2 + cfg.detect.workers + cfg.classify.workers
    deadline = time.monotonic() + 30
    while True:
        found: dict[str, psutil.Process] = {}
        for child in sorted(psutil.Process(launcher.pid).children(recursive=True), key=lambda p: p.pid):
            cmd = " ".join(child.cmdline())
            for stage in STAGES:
                if f"services.{stage}" in cmd:
                    same = sum(1 for name in found if name.split("#")[0] == stage)
                    found[stage if not same else f"{stage}#{same + 1}"] = child
        if len(found) == expected or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def scrape_drops(cfg: Config) -> dict[str, float]:
    drops: dict[str, float] = {}
    ports = [
        port
        for stage in STAGES
        for port in worker_ports(getattr(cfg, stage).metrics_port, getattr(getattr(cfg, stage), "workers", 1))
    ]
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                match = _DROPPED.match(line)
                if match and float(match.group(3)) > 0:
                    key = f"{match.group(2)}/{match.group(1)}"
                    drops[key] = drops.get(key, 0.0) + float(match.group(3))
    return drops


# ---------------------------------------------------------------- the report


def unsearched(width: int, height: int, cfg: Config) -> str:
    """What a frame over ``detect.max_side`` costs the rolling scan's recall: the faces too small for
    the shrunk copy. The finder (``detect.finder = "yunet"``) confirms those on the frame itself."""
    if cfg.detect.finder == "yunet" or cfg.detect.every_frame:
        return ""
    copy_width, copy_height = copy_size(width, height, cfg.detect.max_side)
    smallest = math.ceil(FaceDetector(cfg.detect, 1).window * width / copy_width)
    if smallest <= cfg.detect.min_size:
        return ""
    return (
        f" At {width}x{height} detection looks at a {copy_width}x{copy_height} copy (`detect.max_side`"
        f" {cfg.detect.max_side}): the rolling scan does not look for faces under {smallest} px; the full-frame"
        f" cascade looks down to {cfg.detect.min_size} px."
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values) * 1000, q))


@dataclass(frozen=True)
class FileAnalysis:
    frames: int
    media_s: float  # the video's length
    wall_s: float  # emopipe run's start to exit

    @property
    def speed(self) -> float:
        return self.media_s / self.wall_s


def file_analysis(base: Config, video: Path, workdir: Path) -> FileAnalysis:
    """``emopipe run`` on the video once, lossless, timed from start to exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    progress("file analysis: emopipe run, lossless")
    start = time.monotonic()
    lines = measure.run_pipeline(bench_config(base, video, 1, workdir, live=False), workdir, str(video))
    wall = time.monotonic() - start
    return FileAnalysis(len(lines), len(lines) / video_fps(video), wall)


def report(
    video: Path,
    paper_fps: float,
    pipe: PipelineResult,
    tracking: TrackingResult,
    cfg: Config,
    args: argparse.Namespace,
    baseline: PipelineResult | None = None,
    analysis: FileAnalysis | None = None,
) -> str:
    total = pipe.total
    width, height = video_size(video)
    rows = [
        f"# emopipe bench: {len(pipe.cameras)} cameras",
        "",
        f"- machine: {machine()}",
        f"- video: {video} ({width}x{height} frames, {video_fps(video):.0f} FPS per camera, looped)",
        f"- command: `emopipe bench --cameras {len(pipe.cameras)} --seconds {args.seconds:g}"
        + (f" --transport {args.transport}" if args.transport != "ipc" else "")
        + (f" --source {args.source}" if args.source else "")
        + (f" --size {args.size[0]}x{args.size[1]}" if args.size else "")
        + (f" --config {args.config}" if args.config else "")
        + (f" --recall-frames {args.recall_frames}" if args.recall_frames != 480 and not args.smoke else "")
        + "".join(f" --workers {w}" for w in args.workers or [])
        + (" --every-frame" if args.every_frame else "")
        + "`",
        f"- measured {pipe.seconds:.1f} s after {args.warmup:g} s of warm-up, live mode (--realtime), "
        + (
            "detection full-frame on every frame, detect.threads = 1"
            if args.every_frame
            else f"config {args.config}"
            if args.config
            else "default config"
        )
        + f"; workers: detect {cfg.detect.workers}, classify {cfg.classify.workers}",
        "",
        "| camera | processed FPS | latency p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in pipe.cameras:
        lat = pipe.latencies[c]
        p50, p95, p99 = (percentile(lat, q) for q in (50, 95, 99))
        rows.append(f"| {c} | {pipe.fps(c):.1f} | {p50:.0f} | {p95:.0f} | {p99:.0f} |")
    rows += [
        "",
        f"Throughput: {total:.1f} frames/s over all cameras; the paper's single-process loop: {paper_fps:.1f} FPS"
        f" ({total / paper_fps:.1f}x).",
        "",
        "| stage | CPU % | RSS start MB | RSS end MB |",
        "|---|---:|---:|---:|",
    ]
    for stage, u in sorted(pipe.usage.items(), key=lambda item: STAGES.index(item[0].split("#")[0])):
        rows.append(f"| {stage} | {u.cpu_percent:.0f} | {u.rss_start_mb:.0f} | {u.rss_end_mb:.0f} |")
    drops = ", ".join(f"{k} {v:.0f}" for k, v in sorted(pipe.drops.items())) or "none"
    if baseline is not None:
        slowest = min(baseline.fps(c) for c in baseline.cameras)
        rows += [
            "",
            f"Workers: the same run with one worker per stage first: {baseline.total:.1f} frames/s (slowest camera"
            f" {slowest:.1f} FPS); with detect {cfg.detect.workers}, classify {cfg.classify.workers}:"
            f" {total:.1f} frames/s, **{total / baseline.total:.2f}x**.",
        ]
    rows += [
        "",
        f"Drops by stage/reason: {drops}.",
        "",
        f"Detection over {tracking.frames} frames in order (lossless), against the full-frame cascade on every frame:"
        f" recall {100 * tracking.recall:.1f}% ({tracking.covered}/{tracking.reference_boxes} boxes at IoU >= 0.3),"
        f" {tracking.extra_boxes} boxes where the cascade found none; of the cascade's boxes YuNet confirms"
        f" {100 * tracking.confirmed_recall:.1f}% ({tracking.confirmed_covered}/{tracking.confirmed_boxes});"
        f" detect per frame (one core) median {tracking.detect_ms_scheduled:.1f} ms scheduled against"
        f" {tracking.detect_ms_full:.1f} ms full-frame.{unsearched(width, height, cfg)}",
        f"Label flicker: {tracking.raw_changes_per_track_s:.2f} raw against {tracking.smoothed_changes_per_track_s:.2f}"
        f" smoothed label changes per track-second (smooth_s = {cfg.sink.smooth_s:g}).",
        "",
    ]
    if analysis is not None:
        rows += [
            f"File analysis (`emopipe run` on the video, lossless, one camera): {analysis.frames} frames"
            f" ({analysis.media_s:.1f} s of video) in {analysis.wall_s:.1f} s from start to exit,"
            f" **{analysis.speed:.1f}x real time** ({analysis.frames / analysis.wall_s:.0f} frames/s,"
            " start-up included).",
            "",
        ]
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emopipe bench", description=__doc__.split("\n", 1)[0])
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cameras", type=int, default=4, help="copies of the video, one camera each (default 4)")
    parser.add_argument("--source", help="your own video (default: carphone at 640x480, 30 FPS)")
    parser.add_argument(
        "--size",
        type=parse_size,
        metavar="WxH",
        help="the video scaled to WxH for every step, e.g. 1280x720 (to cover it, centre-cropped; default: as it is)",
    )
    parser.add_argument("--config", help="TOML config to measure (default: the built-in defaults)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window of the pipeline run")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds of pipeline run not measured")
    parser.add_argument("--paper-seconds", type=float, default=10.0, help="how long the paper's loop runs")
    parser.add_argument("--recall-frames", type=int, default=480, help="frames for recall and flicker (0: all)")
    parser.add_argument(
        "--transport", choices=("ipc", "tcp"), default="ipc", help="between stages (default ipc, as on one host)"
    )
    parser.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    parser.add_argument("--smoke", action="store_true", help="a few seconds, 2 cameras: checks that it all runs")
    parser.add_argument(
        "--workers",
        action="append",
        metavar="STAGE=N",
        help="N workers of detect or classify; the run is then also measured with one of each, for the ratio",
    )
    parser.add_argument(
        "--every-frame",
        action="store_true",
        help="detection full-frame on every frame, one camera at a time per worker (detect.threads = 1)",
    )


def run(args: argparse.Namespace) -> int:
    if args.smoke:
        args.cameras, args.seconds, args.warmup, args.paper_seconds, args.recall_frames = 2, 4.0, 4.0, 2.0, 60
    if args.cameras < 1:
        print("emopipe bench: --cameras must be at least 1", file=sys.stderr)
        return 2
    base = config_mod.load(args.config)
    if args.every_frame:
        base = config_mod.replace(base, "detect", every_frame=True, threads=1)
    try:
        workers = config_mod.parse_workers(args.workers or [])
    except config_mod.ConfigError as exc:
        print(f"emopipe bench: {exc}", file=sys.stderr)
        return 2
    video = Path(args.source).resolve() if args.source else bench_video()
    if not video.is_file():
        named = redact(args.source) if args.source else video  # as given: a URL keeps its //
        print(f"emopipe bench: video {named} does not exist", file=sys.stderr)
        return 2
    baseline = None
    with tempfile.TemporaryDirectory(prefix="emopipe-bench-") as tmp:
        if args.size:
            progress(f"scaling {video.name} to {args.size[0]}x{args.size[1]}")
            video = scaled_video(video, args.size, Path(tmp) if args.source else sample_video.cache_dir())
        model = EmotionModel(config_mod.resolve_path(base.classify.model), base.classify.intra_op_threads)
        paper_fps = paper_loop(video, model, base, args.paper_seconds)
        tracking = measure_tracking(frames_of(video, limit=args.recall_frames), video_fps(video), base, model)
        if workers:
            cfg = bench_config(base, video, args.cameras, Path(tmp), args.transport)
            baseline = run_pipeline(cfg, args.warmup, args.seconds, Path(tmp))
        cfg = bench_config(base, video, args.cameras, Path(tmp), args.transport, workers)
        pipe = run_pipeline(cfg, args.warmup, args.seconds, Path(tmp))
        analysis = file_analysis(base, video, Path(tmp) / "file")
        progress("")
        text = report(video, paper_fps, pipe, tracking, cfg, args, baseline, analysis)  # reads the video's size
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
