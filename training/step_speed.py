"""Seconds per training step of one architecture: Keras against ``training.torch_train``.

    python -m training.step_speed --architecture emonet-wide                  # Keras on TensorFlow
    KERAS_BACKEND=torch python -m training.step_speed --architecture emonet-wide

Times the same network, batch and optimizer (AdamW, categorical cross-entropy) four ways:
Keras (``train_on_batch``, the step ``fit`` runs) on the current backend in float32 and
under ``mixed_bfloat16``, and the plain PyTorch step of ``training.torch_train`` in float32
and under bfloat16 autocast. Faces are random pixels (the arithmetic does not depend on
them); the variants run interleaved, each ``--repeats`` times, and the median of each is
printed with the machine it ran on, so ratios hold on a shared, noisy machine. Run it with
nothing else on the CPU: PyTorch's and TensorFlow's thread pools spin while they wait, so a
second busy process slows both far more than its share.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable

import keras
import numpy as np
import torch

from emopipe.labels import NUM_CLASSES
from training.models import ARCHITECTURES, build
from training.speed import cpu_name
from training.torch_net import TorchNet
from training.torch_train import Precision, soft_cross_entropy


def keras_step(architecture: str, policy: str, faces: np.ndarray, targets: np.ndarray) -> Callable[[], None]:
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build(architecture)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="categorical_crossentropy")
    return lambda: model.train_on_batch(faces, targets)


def torch_step(architecture: str, precision: str, faces: np.ndarray, targets: np.ndarray) -> Callable[[], None]:
    where = Precision("cpu", precision)
    net = TorchNet(build(architecture)).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, eps=1e-7)
    x, t = where.tensor(faces), where.tensor(targets)

    def step() -> None:
        with where.autocast():
            logits = net(x)
        loss = soft_cross_entropy(logits, t, 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="emonet-wide")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (args.batch_size, 48, 48, 1)).astype(np.float32)
    targets = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, args.batch_size)]
    backend = keras.backend.backend()
    steps = {
        f"Keras ({backend}), float32": keras_step(args.architecture, "float32", faces, targets),
        f"Keras ({backend}), mixed_bfloat16": keras_step(args.architecture, "mixed_bfloat16", faces, targets),
        "training.torch_train, float32": torch_step(args.architecture, "fp32", faces, targets),
        "training.torch_train, bfloat16 autocast": torch_step(args.architecture, "bf16", faces, targets),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm-up: graph tracing, kernel selection
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    print(
        f"{args.architecture}, batch {args.batch_size}, on {cpu_name()} ({platform.machine()}, "
        f"{torch.get_num_threads()} threads); keras {keras.__version__}, torch {torch.__version__}"
    )
    fastest = min(statistics.median(values) for values in times.values())
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name}: median {median:.3f} s a step, {args.batch_size / median:,.0f} faces/s, "
            f"{median / fastest:.2f}x the fastest (min {min(values):.3f}, max {max(values):.3f}, {args.repeats} steps)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
