"""Random augmentation of uint8 face batches in NumPy/OpenCV, identical on every Keras backend.

Two kinds: the geometry of the paper (rotation, shift, zoom: also the jitter of a detector's
box around the face) with flips and random erasing; and what a real camera does to a face
that FER-2013's web photos rarely show (:class:`Camera`): light (brightness, contrast,
gamma), focus and resolution (blur, a face seen small and scaled up), compression (JPEG)
and sensor noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass(frozen=True)
class Camera:
    """Each effect applies with its probability; amounts are drawn uniformly in the ranges."""

    prob: float = 0.0  # probability that a face gets any camera effect at all (0: off)
    brightness: float = 0.25  # add uniform +-brightness x 255
    contrast: float = 0.35  # scale about the mean by uniform 1 +- contrast
    gamma: float = 0.35  # gamma uniform in exp(+-gamma)
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.3)  # Gaussian sigma in face pixels (48 a side)
    downscale_prob: float = 0.3
    downscale_side: tuple[int, int] = (14, 36)  # the face seen this many pixels wide, scaled back up
    jpeg_prob: float = 0.3
    jpeg_quality: tuple[int, int] = (20, 80)
    noise_prob: float = 0.3
    noise_sigma: tuple[float, float] = (2.0, 10.0)  # Gaussian noise, grey levels


@dataclass(frozen=True)
class Augmentation:
    rotation_deg: float = 10.0  # uniform in +-rotation_deg
    shift: float = 0.1  # fraction of the side, uniform in +-shift
    zoom: float = 0.1  # scale uniform in 1 +- zoom
    flip: bool = False  # horizontal flip with probability 1/2
    erase_prob: float = 0.0  # random erasing (Zhong et al. 2017) probability
    erase_area: tuple[float, float] = (0.02, 0.15)
    camera: Camera = field(default_factory=Camera)


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


def camera_effects(image: np.ndarray, rng: np.random.Generator, cam: Camera) -> np.ndarray:
    """``image`` (uint8 ``[S,S]``) as a real camera might have delivered it: a new array."""
    side = image.shape[0]
    x = image.astype(np.float32)
    mean = float(x.mean())
    x = (x - mean) * rng.uniform(1 - cam.contrast, 1 + cam.contrast) + mean
    x += rng.uniform(-cam.brightness, cam.brightness) * 255.0
    x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** np.exp(rng.uniform(-cam.gamma, cam.gamma))
    if rng.random() < cam.blur_prob:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(*cam.blur_sigma))
    if rng.random() < cam.downscale_prob:
        small = int(rng.integers(cam.downscale_side[0], cam.downscale_side[1] + 1))
        x = cv2.resize(cv2.resize(x, (small, small), interpolation=cv2.INTER_AREA), (side, side))
    if rng.random() < cam.noise_prob:
        x = x + rng.normal(0.0, rng.uniform(*cam.noise_sigma), size=x.shape)
    out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if rng.random() < cam.jpeg_prob:
        quality = int(rng.integers(cam.jpeg_quality[0], cam.jpeg_quality[1] + 1))
        ok, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode a face (augmentation)")
        out = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
    return out


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
        if rng.random() < aug.camera.prob:
            warped = camera_effects(np.ascontiguousarray(warped), rng, aug.camera)
        out[i] = warped
        if rng.random() < aug.erase_prob:
            _erase(out[i], rng, aug)
    return out
