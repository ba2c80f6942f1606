"""Pack an image-folder FER-2013 (train/, test/) into one .npz that a GPU machine can carry.

    python -m training.pack ../shared/fer2013 .gpu/fer2013.npz
    emopipe-train --data .gpu/fer2013.npz ...    # on the machine it travelled to

The archive holds each image file's bytes (FER-2013's JPEGs take 60 MB; their decoded pixels
compress to about 71 MB), less the prefix all files of a split share (the 328-byte JPEG header
with its quantisation and Huffman tables, stored once: 11 MB less), with labels and file
names; ``training.data`` decodes them exactly as it decodes the folder itself. Every image is
decoded and checked here first, so a bad file stops the pack with its name rather than the
training run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from training.data import DEFAULT_DATA, decode_face, folder_files


def _common_prefix(files: list[np.ndarray]) -> np.ndarray:
    """The longest run of leading bytes every file has (kept short of each file's whole length)."""
    length = min(len(data) for data in files) - 1
    prefix = files[0][:length]
    for data in files[1:]:
        differs = np.flatnonzero(data[: len(prefix)] != prefix)
        if len(differs):
            prefix = prefix[: differs[0]]
    return prefix


def pack(root: Path, out: Path) -> dict[str, int]:
    """Write ``out`` from ``root``/train and ``root``/test; returns the image count of each."""
    arrays: dict[str, np.ndarray] = {}
    counts = {}
    for split in ("train", "test"):
        found = folder_files(root / split)
        files = [np.fromfile(file, np.uint8) for file, _ in found]
        for data, (file, _) in zip(files, found, strict=True):
            decode_face(data, file)
        prefix = _common_prefix(files)
        chunks = [data[len(prefix) :] for data in files]
        arrays[f"{split}_prefix"] = prefix
        arrays[f"{split}_bytes"] = np.concatenate(chunks)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)
        arrays[f"{split}_labels"] = np.array([label for _, label in found], np.int8)
        arrays[f"{split}_names"] = np.array([str(file.relative_to(root)).encode() for file, _ in found], "S")
        counts[split] = len(found)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)  # type: ignore[arg-type]  # the JPEG bytes do not compress further
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, nargs="?", default=DEFAULT_DATA, help="folder with train/ and test/")
    parser.add_argument("out", type=Path, help="the .npz to write")
    args = parser.parse_args(argv)
    if args.out.suffix != ".npz":
        parser.error(f"{args.out}: the archive's name must end in .npz (training.data reads it by that)")
    counts = pack(args.root, args.out)
    size = args.out.stat().st_size / 1e6
    print(f"packed {counts['train']} train and {counts['test']} test images into {args.out} ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
