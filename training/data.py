"""Read FER-2013 in either of its distributed forms into uint8 arrays.

* The original Kaggle CSV: columns ``emotion,pixels,Usage``; ``pixels`` is 2,304
  space-separated grey values of a 48x48 face; ``Usage`` is Training, PublicTest or
  PrivateTest. The split comes from that column, never from row positions.
* The image-folder layout: ``<root>/<emotion>/*.jpg`` (e.g. ``train/happy/x.jpg``),
  folder names being the lower-case labels.

Both return ``(images uint8 [N,48,48], labels int64 [N])`` with labels in FER-2013's
id order (``emopipe.labels.EMOTIONS``). Anything malformed stops the load with a
``DatasetError`` naming the file, row or folder: nothing is skipped silently.

The face size, 48, is a fact of the data set and is written here only: the networks'
input shape comes from it (``training.models``), the export writes the Keras model's input
size into the ONNX metadata, and serving reads it from there.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path

import cv2
import numpy as np

from emopipe.labels import EMOTIONS

log = logging.getLogger(__name__)

#: The copy beside the repository (``../shared/fer2013``): train/ is Training, test/ PublicTest.
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "fer2013"
#: Where ``cached_splits`` keeps the packed arrays by default (ignored by git).
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache"

#: FER-2013 faces are 48x48 single-channel images: the one place the models' input size is written.
FACE_SIZE = 48

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
        raise DatasetError(f"{where}: {len(fields)} pixel values, expected {_PIXELS} ({FACE_SIZE}x{FACE_SIZE})")
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


def read_face(path: Path) -> np.ndarray:
    image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DatasetError(f"{path}: not a readable image")
    if image.shape != (FACE_SIZE, FACE_SIZE):
        raise DatasetError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, expected {FACE_SIZE}x{FACE_SIZE}")
    return image


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


def sample(total: int, count: int, seed: int) -> np.ndarray:
    """Indices of ``count`` of ``total`` items, drawn without replacement with ``seed``, in order."""
    return np.sort(np.random.default_rng(seed).choice(total, count, replace=False))


def subset(split: Split, count: int, seed: int) -> Split:
    """``count`` faces of ``split`` drawn with ``seed`` (all of them if ``count`` is 0 or too large)."""
    if count <= 0 or count >= len(split[1]):
        return split
    picked = sample(len(split[1]), count, seed)
    return split[0][picked], split[1][picked]


def load_folder_subset(root: str | Path, count: int, seed: int) -> Split:
    """``subset(load_folder(root), count, seed)``, decoding only the faces drawn."""
    found = folder_files(root)
    if count <= 0 or count >= len(found):
        return load_folder(root)
    picked = [found[i] for i in sample(len(found), count, seed)]
    return np.stack([read_face(file) for file, _ in picked]), np.array([label for _, label in picked], np.int64)


def load_splits(source: str | Path) -> tuple[Split, Split]:
    """(Training, PublicTest) from a Kaggle CSV file or an image-folder root with train/ and test/."""
    source = Path(source)
    if source.suffix.lower() == ".csv":
        splits = load_csv(source)
        return splits["Training"], splits["PublicTest"]
    return load_folder(source / "train"), load_folder(source / "test")


def cached_splits(source: str | Path, cache_dir: str | Path) -> tuple[Split, Split]:
    """``load_splits`` memoised in one compressed .npz under ``cache_dir``, keyed by the source's path."""
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


def training_splits(source: str | Path, cache_dir: str | Path, limit: int = 0, seed: int = 0) -> tuple[Split, Split]:
    """(Training, PublicTest), each cut to ``limit`` faces drawn with ``seed`` if ``limit`` > 0.

    The whole data set comes through ``cached_splits``; a cut from image folders decodes only
    the faces drawn (the same faces as cutting the whole), so a smoke run starts at once."""
    source = Path(source)
    if limit > 0 and source.is_dir():
        return load_folder_subset(source / "train", limit, seed), load_folder_subset(source / "test", limit, seed)
    train, val = cached_splits(source, cache_dir)
    return subset(train, limit, seed), subset(val, limit, seed)
