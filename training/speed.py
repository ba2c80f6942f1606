"""Faces per second of an ONNX emotion model in onnxruntime on one CPU thread, batch 1.

    python -m training.speed services/classify/models/emotion.onnx [other.onnx ...]

Each model is opened and run as the classify stage runs it
(``services.classify.model.EmotionModel``, one thread), on a face of the size its metadata
gives. Several models given together are timed interleaved in the same run, so their ratio
holds on a noisy machine. Prints the median of the repeats and the machine it ran on.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.classify.model import EmotionModel


def faces_per_second(model: EmotionModel, runs: int) -> float:
    """``runs`` single-face inferences of one random face of the model's input size."""
    face = np.random.default_rng(0).integers(0, 256, (1, model.input_size, model.input_size), dtype=np.uint8)
    start = time.perf_counter()
    for _ in range(runs):
        model.predict(face)
    return runs / (time.perf_counter() - start)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError as err:
        return f"unknown CPU ({err})"
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--runs", type=int, default=500, help="inferences per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    models = {path: EmotionModel(path, intra_op_threads=1) for path in args.models}
    rates: dict[Path, list[float]] = {path: [] for path in args.models}
    for model in models.values():
        faces_per_second(model, 50)  # warm-up
    for _ in range(args.repeats):
        for path, model in models.items():
            rates[path].append(faces_per_second(model, args.runs))
    print(f"onnxruntime {ort.__version__}, 1 thread, batch 1, on {cpu_name()} ({platform.machine()})")
    for path, values in rates.items():
        spread = f"min {min(values):,.0f}, max {max(values):,.0f}, {args.repeats} x {args.runs}"
        print(f"{path}: median {statistics.median(values):,.0f} faces/s ({spread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
