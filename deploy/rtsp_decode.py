"""What decoding an RTSP camera costs capture, per resolution and codec.

    python -m deploy.rtsp_decode [--sizes 640x480,1280x720,1920x1080] [--codecs h264,h265] [--seconds 15]

For each size and codec, a real RTSP camera (``deploy/rtsp_camera.py``, GStreamer's server)
streams the carphone face video scaled to that size and looped to 40 s, and one capture
reader (``services.capture.sources.open_video``, OpenCV's FFmpeg backend over TCP) reads it
for ``--seconds``. It prints the frames read a second and the reader's CPU time per frame
(``time.process_time``: this process only, not the server's encoder), the first two seconds
left out. The server encodes on the same machine, so on a small one its encoder takes CPU
too and may cap the frame rate; the CPU per frame is the figure that scales.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2

from deploy.measure import frames_of, free_port, machine, write_video
from emopipe import sample_video
from emopipe.config import SourceConfig
from services.capture.sources import SourceError, open_video

CAMERA = Path(__file__).resolve().with_name("rtsp_camera.py")
WARM_UP_S = 2.0


def looped_clip(path: Path, size: tuple[int, int], seconds: float = 40.0, fps: float = 30.0) -> None:
    """The carphone video scaled to ``size``, played forward and back until ``seconds`` long."""
    frames = list(frames_of(sample_video.carphone(), size))
    cycle = frames + frames[::-1]
    count = int(seconds * fps)
    write_video(path, (cycle[i % len(cycle)] for i in range(count)), fps)


def measure(url: str, seconds: float) -> tuple[float, float, int]:
    """Frames a second, CPU milliseconds a frame and frames read by one reader of ``url``."""
    cap = open_video(SourceConfig(id="bench", uri=url), timeout_s=10.0)
    try:
        start = time.monotonic()
        while time.monotonic() - start < WARM_UP_S:
            if not cap.read()[0]:
                raise SourceError(f"{url} stopped during the warm-up")
        frames, wall, cpu = 0, time.monotonic(), time.process_time()
        while time.monotonic() - wall < seconds:
            if not cap.read()[0]:
                break
            frames += 1
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    finally:
        cap.release()
    return frames / wall, 1000 * cpu / max(frames, 1), frames


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="640x480,1280x720,1920x1080")
    parser.add_argument("--codecs", default="h264,h265")
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        print("rtsp_decode: Debian's python3 (with python3-gi) is needed for the RTSP server", file=sys.stderr)
        return 2
    cv2.setNumThreads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="emopipe-rtsp-") as tmp:
        for text in args.sizes.split(","):
            width, height = (int(v) for v in text.lower().split("x"))
            clip = Path(tmp) / f"clip-{width}x{height}.mp4"
            looped_clip(clip, (width, height))
            for codec in args.codecs.split(","):
                port = free_port()
                server = subprocess.Popen(
                    [python, str(CAMERA), str(clip), "--port", str(port), "--codec", codec],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    env={**os.environ},
                )
                try:
                    assert server.stdout is not None
                    if server.stdout.readline().strip() != "ready":
                        rows.append(f"| {width}x{height} | {codec} | – | – | the server did not start |")
                        continue
                    fps, ms, frames = measure(f"rtsp://127.0.0.1:{port}/cam", args.seconds)
                    rows.append(f"| {width}x{height} | {codec} | {fps:.1f} | {ms:.2f} | {frames} frames |")
                except SourceError as exc:
                    rows.append(f"| {width}x{height} | {codec} | – | – | {exc} |")
                finally:
                    server.terminate()
                    server.wait(10)
                print(rows[-1], flush=True)
    print(f"\nRTSP decode in capture's reader, one thread, {args.seconds:g} s each, on {machine()}:\n")
    print("| size | codec | frames/s | reader CPU ms/frame | |\n|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
