"""Draw the classified faces onto a copy of the frame."""

from __future__ import annotations

import cv2
import numpy as np

from emopipe.messages import Results
from services.sink.smoothing import Smoothed

BOX_COLOUR = (0, 220, 0)  # BGR
TEXT_COLOUR = (0, 0, 0)


def annotate(image: np.ndarray, results: Results, smoothed: list[Smoothed] | None = None) -> np.ndarray:
    """A copy of ``image`` with each face's box, "#<track> <smoothed emotion> <confidence>" and a bar
    of its seven probabilities drawn on it (``smoothed`` None: the raw labels)."""
    out = image.copy()
    height = out.shape[0]
    scale = max(0.35, height / 720)
    thickness = max(1, round(height / 360))
    labels = smoothed or [Smoothed(f.emotion, f.confidence) for f in results.faces]
    for face, label in zip(results.faces, labels, strict=True):
        b = face.box
        cv2.rectangle(out, (b.x, b.y), (b.x + b.w, b.y + b.h), BOX_COLOUR, thickness)
        _probability_bar(out, b.x, b.y + b.h + 2, b.w, face.probabilities)
        track = f"#{face.track} " if face.track else ""
        text = f"{track}{label.emotion} {label.confidence:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(0, b.y - th - base - 2)
        cv2.rectangle(out, (b.x, top), (b.x + tw + 2, top + th + base + 2), BOX_COLOUR, cv2.FILLED)
        cv2.putText(out, text, (b.x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_COLOUR, 1, cv2.LINE_AA)
    return out


def _probability_bar(out: np.ndarray, x: int, y: int, width: int, probabilities: tuple[float, ...]) -> None:
    """One column per label, its height the probability, under the face's box."""
    height = max(6, width // 6)
    if y + height > out.shape[0] or not probabilities:
        return
    column = max(1, width // len(probabilities))
    cv2.rectangle(out, (x, y), (x + column * len(probabilities), y + height), (40, 40, 40), cv2.FILLED)
    for i, p in enumerate(probabilities):
        top = y + height - int(round(p * height))
        cv2.rectangle(out, (x + i * column, top), (x + (i + 1) * column - 1, y + height), BOX_COLOUR, cv2.FILLED)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot JPEG-encode an image of shape {image.shape}")
    return buf.tobytes()
