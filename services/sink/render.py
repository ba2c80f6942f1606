"""Draw the classified faces onto a copy of the frame."""

from __future__ import annotations

import cv2
import numpy as np

from emopipe.messages import Results

BOX_COLOUR = (0, 220, 0)  # BGR
TEXT_COLOUR = (0, 0, 0)


def annotate(image: np.ndarray, results: Results) -> np.ndarray:
    """A copy of ``image`` with each face's box and "<emotion> <confidence>" drawn on it."""
    out = image.copy()
    height = out.shape[0]
    scale = max(0.35, height / 720)
    thickness = max(1, round(height / 360))
    for face in results.faces:
        b = face.box
        cv2.rectangle(out, (b.x, b.y), (b.x + b.w, b.y + b.h), BOX_COLOUR, thickness)
        text = f"{face.emotion} {face.confidence:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(0, b.y - th - base - 2)
        cv2.rectangle(out, (b.x, top), (b.x + tw + 2, top + th + base + 2), BOX_COLOUR, cv2.FILLED)
        cv2.putText(out, text, (b.x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_COLOUR, 1, cv2.LINE_AA)
    return out


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot JPEG-encode an image of shape {image.shape}")
    return buf.tobytes()
