"""YuNet's network run by onnxruntime, its output decoded as OpenCV's ``cv2.FaceDetectorYN`` does.

Why not ``cv2.FaceDetectorYN`` itself: OpenCV's DNN module takes 6.8 ms to run YuNet on a
320x240 frame on one core of the 2-core AMD EPYC, onnxruntime 3.2 ms (4.2 with the decoding
below); the finder runs it on every camera five times a second, so with eight cameras that was
a quarter of the machine (BENCHMARKS.md). onnxruntime is already the classifier's runtime. The
decoding is OpenCV's ``FaceDetectorYN::postProcess`` (modules/objdetect/src/face_detect.cpp,
4.x, for the multi-output model shipped here): the same faces, to 1e-4 px
(``tests/test_yunet.py`` compares the two on real frames).
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

#: the model's feature strides; its outputs are cls, obj, bbox and kps for each, in that order
STRIDES = (8, 16, 32)
#: the input's sides are padded (right and bottom, with black) to a multiple of this
PAD_TO = 32


@functools.cache
def session(model: Path) -> ort.InferenceSession:
    """One session per model in a process: onnxruntime runs it from any thread (each camera's
    detector calls it from its own), on the calling thread only (``intra_op_num_threads`` 1:
    detect runs cameras in parallel, not inside a frame)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


class YuNetNet:
    """``detect(image)`` is ``cv2.FaceDetectorYN.detect``'s second value for a BGR ``image`` of any
    size: rows of x, y, w, h, five landmarks (x, y), score; None where there is no face."""

    def __init__(self, model: Path, score: float, nms_iou: float, top_k: int) -> None:
        self.session = session(model)
        self.input = self.session.get_inputs()[0].name
        self.score = score
        self.nms_iou = nms_iou
        self.top_k = top_k

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        height, width = image.shape[:2]
        padded_h, padded_w = -(-height // PAD_TO) * PAD_TO, -(-width // PAD_TO) * PAD_TO
        if (padded_h, padded_w) != (height, width):
            image = cv2.copyMakeBorder(image, 0, padded_h - height, 0, padded_w - width, cv2.BORDER_CONSTANT, value=0)
        outputs = self.session.run(None, {self.input: cv2.dnn.blobFromImage(image)})
        found = [
            self._decode(stride, padded_w // stride, *(outputs[i + 3 * k][0] for k in range(4)))
            for i, stride in enumerate(STRIDES)
        ]
        faces = np.concatenate(found)  # [N, 15]; each stride's rows, none where it found no face
        if not len(faces):
            return None
        boxes = faces[:, :4].astype(np.int32).tolist()  # OpenCV's suppression compares whole-pixel boxes
        keep = cv2.dnn.NMSBoxes(boxes, faces[:, 14].tolist(), self.score, self.nms_iou, 1.0, self.top_k)
        return faces[np.asarray(keep, dtype=int).reshape(-1)] if len(keep) else None

    def _decode(
        self, stride: int, cols: int, cls: np.ndarray, obj: np.ndarray, bbox: np.ndarray, kps: np.ndarray
    ) -> np.ndarray:
        """One stride's faces over the score threshold: anchor (c, r) is cell ``r * cols + c``."""
        score = np.sqrt(np.clip(cls[:, 0], 0.0, 1.0) * np.clip(obj[:, 0], 0.0, 1.0))
        cells = np.flatnonzero(score >= self.score)
        c = (cells % cols).astype(np.float32)[:, None]
        r = (cells // cols).astype(np.float32)[:, None]
        box, points = bbox[cells], kps[cells]
        size = np.exp(box[:, 2:4]) * stride
        centre = (np.hstack([c, r]) + box[:, 0:2]) * stride
        landmarks = (points + np.tile(np.hstack([c, r]), 5)) * stride
        return np.hstack([centre - size / 2, size, landmarks, score[cells, None]]).astype(np.float32)
