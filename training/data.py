"""Read FER-2013 in either of its distributed forms into uint8 arrays.

* The original Kaggle CSV: columns ``emotion,pixels,Usage``; ``pixels`` is 2,304
  space-separated grey values of a 48x48 face; ``Usage`` is Training, PublicTest or
  PrivateTest. The split comes from that column, never from row positions.
* The image-folder layout: ``<root>/<emotion>/*.jpg`` (e.g. ``train/happy/x.jpg``),
  folder names being the lower-case labels.
* That layout packed by ``training.pack`` into one ``.npz`` holding the image files' bytes
  (what travels to a GPU machine: FER-2013's JPEGs are smaller than their pixels compressed).

Both return ``(images uint8 [N,48,48], labels int64 [N])`` with labels in FER-2013's
id order (``emopipe.labels.EMOTIONS``). Anything malformed stops the load with a
``DatasetError`` naming the file, row or folder: nothing is skipped silently.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path

import cv2
import numpy as np

from emopipe.labels import EMOTIONS, FACE_SIZE

log = logging.getLogger(__name__)

#: The copy beside the repository (``../shared/fer2013``): train/ is Training, test/ PublicTest.
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "fer2013"
#: Where ``cached_splits`` keeps the packed arrays by default (ignored by git).
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache"

USAGES = ("Training", "PublicTest", "PrivateTest")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm")
_PIXELS = FACE_SIZE * FACE_SIZE


class DatasetError(ValueError):
    """A FER-2013 file, row or folder that cannot be used as it is."""


Split = tuple[np.ndarray, np.ndarray]


def _empty_split() -> Split:
    return np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8), np.zeros((0,), np.int64)


def _parse_row(row: dict[str, str], where: str) -> tuple[np.ndarray, int, str]:
    try:
        label = int(row["emotion"])
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{where}: emotion {row['emotion']!r} is not an integer") from err
    if not 0 <= label < len(EMOTIONS):
        raise DatasetError(f"{where}: unknown emotion id {label} (expected 0..{len(EMOTIONS) - 1})")
    usage = (row["Usage"] or "").strip()
    if usage not in USAGES:
        raise DatasetError(f"{where}: unknown Usage {usage!r} (expected one of {', '.join(USAGES)})")
    fields = (row["pixels"] or "").split()
    if len(fields) != _PIXELS:
        raise DatasetError(f"{where}: {len(fields)} pixel values, expected {_PIXELS} (48x48)")
    try:
        values = np.array(fields, dtype=np.int64)
    except ValueError as err:
        raise DatasetError(f"{where}: pixels are not all integers") from err
    if values.min() < 0 or values.max() > 255:
        raise DatasetError(f"{where}: pixel values outside 0..255")
    return values.astype(np.uint8).reshape(FACE_SIZE, FACE_SIZE), label, usage


def load_csv(path: str | Path) -> dict[str, Split]:
    """Read the Kaggle ``fer2013.csv``; returns ``{usage: (images, labels)}`` for all three usages."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: CSV file not found")
    images: dict[str, list[np.ndarray]] = {u: [] for u in USAGES}
    labels: dict[str, list[int]] = {u: [] for u in USAGES}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{path}: header lacks column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            image, label, usage = _parse_row(row, f"{path}:{line}")
            images[usage].append(image)
            labels[usage].append(label)
    if not any(labels.values()):
        raise DatasetError(f"{path}: no data rows")
    return {
        usage: (np.stack(images[usage]), np.array(labels[usage], np.int64)) if labels[usage] else _empty_split()
        for usage in USAGES
    }


def decode_face(encoded: np.ndarray, where: str | Path) -> np.ndarray:
    image = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DatasetError(f"{where}: not a readable image")
    if image.shape != (FACE_SIZE, FACE_SIZE):
        raise DatasetError(f"{where}: image is {image.shape[1]}x{image.shape[0]}, expected 48x48")
    return image


def read_face(path: Path) -> np.ndarray:
    return decode_face(np.fromfile(path, np.uint8), path)


def load_packed(path: str | Path) -> tuple[Split, Split]:
    """(Training, PublicTest) from a ``training.pack`` archive, decoding its image files."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: packed data set not found")
    splits = []
    with np.load(path) as packed:
        for split in ("train", "test"):
            keys = [f"{split}_{k}" for k in ("prefix", "bytes", "offsets", "labels", "names")]
            missing = [k for k in keys if k not in packed.files]
            if missing:
                raise DatasetError(f"{path}: not a training.pack archive (no {', '.join(missing)})")
            prefix, blob, offsets, labels, names = (packed[k] for k in keys)
            if len(offsets) != len(labels) + 1 or len(names) != len(labels) or not len(labels):
                raise DatasetError(f"{path}: {split} has {len(labels)} labels, {len(offsets)} offsets")
            if labels.min() < 0 or labels.max() >= len(EMOTIONS):
                raise DatasetError(f"{path}: {split} has a label outside 0..{len(EMOTIONS) - 1}")
            images = [
                decode_face(np.concatenate([prefix, blob[start:end]]), f"{path}:{name.decode()}")
                for start, end, name in zip(offsets[:-1], offsets[1:], names, strict=True)
            ]
            splits.append((np.stack(images), labels.astype(np.int64)))
    return splits[0], splits[1]


def folder_files(root: str | Path) -> list[tuple[Path, int]]:
    """``(image file, label)`` for every file under ``<root>/<emotion>/``, checked for layout
    (every sub-folder one of the 7 labels, none empty, only image files) but not decoded."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: folder not found")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DatasetError(f"{root}: no emotion sub-folders")
    found: list[tuple[Path, int]] = []
    for class_dir in class_dirs:
        if class_dir.name not in EMOTIONS:
            raise DatasetError(f"{class_dir}: unknown emotion folder (expected one of {', '.join(EMOTIONS)})")
        files = sorted(p for p in class_dir.iterdir() if p.is_file())
        if not files:
            raise DatasetError(f"{class_dir}: empty emotion folder")
        label = EMOTIONS.index(class_dir.name)
        for file in files:
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                raise DatasetError(f"{file}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
            found.append((file, label))
    return found


def load_folder(root: str | Path) -> Split:
    """Read ``<root>/<emotion>/*`` images; every sub-folder must be one of the 7 labels."""
    found = folder_files(root)
    images = [read_face(file) for file, _ in found]
    return np.stack(images), np.array([label for _, label in found], np.int64)


def load_splits(source: str | Path) -> tuple[Split, Split]:
    """(Training, PublicTest) from a Kaggle CSV file, a ``training.pack`` archive (.npz) or an
    image-folder root with train/ and test/."""
    source = Path(source)
    if source.suffix.lower() == ".csv":
        splits = load_csv(source)
        return splits["Training"], splits["PublicTest"]
    if source.suffix.lower() == ".npz":
        return load_packed(source)
    return load_folder(source / "train"), load_folder(source / "test")


def cached_splits(source: str | Path, cache_dir: str | Path) -> tuple[Split, Split]:
    """``load_splits`` memoised in one compressed .npz (also what travels to a GPU machine)."""
    source = Path(source).resolve()
    key = hashlib.sha1(str(source).encode()).hexdigest()[:10]
    cache = Path(cache_dir) / f"fer2013-{key}.npz"
    if cache.is_file():
        with np.load(cache) as packed:
            return (packed["x_train"], packed["y_train"]), (packed["x_val"], packed["y_val"])
    (x_train, y_train), (x_val, y_val) = load_splits(source)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    log.info("packed %s into %s", source, cache)
    return (x_train, y_train), (x_val, y_val)
