"""Random augmentation of uint8 face batches in NumPy/OpenCV, identical on every Keras backend."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Augmentation:
    rotation_deg: float = 10.0  # uniform in +-rotation_deg
    shift: float = 0.1  # fraction of the side, uniform in +-shift
    zoom: float = 0.1  # scale uniform in 1 +- zoom
    flip: bool = False  # horizontal flip with probability 1/2
    erase_prob: float = 0.0  # random erasing (Zhong et al. 2017) probability
    erase_area: tuple[float, float] = (0.02, 0.15)


def _affine(rng: np.random.Generator, aug: Augmentation, side: int) -> np.ndarray:
    centre = (side / 2, side / 2)
    angle = rng.uniform(-aug.rotation_deg, aug.rotation_deg)
    scale = rng.uniform(1 - aug.zoom, 1 + aug.zoom)
    matrix = np.asarray(cv2.getRotationMatrix2D(centre, angle, scale), dtype=np.float64)
    matrix[:, 2] += rng.uniform(-aug.shift, aug.shift, size=2) * side
    return matrix


def _erase(image: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> None:
    side = image.shape[0]
    area = rng.uniform(*aug.erase_area) * side * side
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
    h = int(min(side, round(np.sqrt(area * aspect))))
    w = int(min(side, round(np.sqrt(area / aspect))))
    top = int(rng.integers(0, side - h + 1))
    left = int(rng.integers(0, side - w + 1))
    image[top : top + h, left : left + w] = rng.integers(0, 256, size=(h, w), dtype=np.uint8)


def augment_batch(images: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    """Return an augmented copy of ``images`` (uint8 ``[N,S,S]``)."""
    out = np.empty_like(images)
    side = images.shape[1]
    for i, image in enumerate(images):
        warped = cv2.warpAffine(
            image, _affine(rng, aug, side), (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        if aug.flip and rng.random() < 0.5:
            warped = warped[:, ::-1]
        out[i] = warped
        if rng.random() < aug.erase_prob:
            _erase(out[i], rng, aug)
    return out
