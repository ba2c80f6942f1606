"""The emotion model: an ONNX file that describes itself (labels and input size in its metadata).

Contract: input float32 ``[N, S, S, 1]`` with raw 0-255 grey pixels (the model does its
own scaling), output ``[N, len(labels)]`` probabilities; metadata ``labels`` (a JSON
list in output order) and ``input_size`` (S). Optional metadata ``preprocessing`` names
what is done to each crop before the graph (:data:`PREPROCESSING`; absent: ``none``): a
model trained on histogram-equalised faces says so, and is served them. Anything else is
an error naming the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort


def _equalize(crops: np.ndarray) -> np.ndarray:
    """Each crop's grey levels spread over 0..255 (OpenCV's histogram equalisation): faces
    under flat studio light, a dim room or a washed-out camera then look alike."""
    return np.stack([cv2.equalizeHist(np.ascontiguousarray(c)) for c in crops]) if len(crops) else crops


#: what a model's ``preprocessing`` metadata may name: uint8 ``[N,S,S]`` -> uint8 ``[N,S,S]``
PREPROCESSING: dict[str, Callable[[np.ndarray], np.ndarray]] = {"none": lambda crops: crops, "equalize_hist": _equalize}


class ModelError(RuntimeError):
    """A model file that is missing or breaks the contract; the message names the file."""


class EmotionModel:
    def __init__(self, path: Path, intra_op_threads: int = 1) -> None:
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        self.path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelError(f"model file {path} cannot be loaded: {exc}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        self.labels = _labels(path, meta)
        self.input_size = _input_size(path, meta)
        self.preprocessing = meta.get("preprocessing", "none")
        if self.preprocessing not in PREPROCESSING:
            known = ", ".join(PREPROCESSING)
            raise ModelError(f"model {path}: metadata 'preprocessing' is {self.preprocessing!r} (known: {known})")
        self._prepare = PREPROCESSING[self.preprocessing]
        self.input_name = self.session.get_inputs()[0].name
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self._check_contract()

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """``[N, S, S]`` uint8 crops -> ``[N, len(labels)]`` probabilities, one batch."""
        if crops.shape[0] == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        if crops.shape[1:] != (self.input_size, self.input_size):
            raise ValueError(f"crops of shape {crops.shape[1:]}, model {self.path} wants {self.input_size}")
        batch = self._prepare(crops).astype(np.float32)[..., np.newaxis]
        (probs,) = self.session.run(None, {self.input_name: batch})[:1]
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != (crops.shape[0], len(self.labels)):
            raise ModelError(f"model {self.path} returned shape {probs.shape} for {crops.shape[0]} faces")
        return probs

    def info(self) -> dict[str, str]:
        return {
            "labels": ",".join(self.labels),
            "input_size": str(self.input_size),
            "preprocessing": self.preprocessing,
            "sha256": self.sha256,
            "path": str(self.path),
        }

    def _check_contract(self) -> None:
        shape = self.session.get_inputs()[0].shape
        if len(shape) != 4 or shape[-1] != 1:
            raise ModelError(f"model {self.path} input shape {shape}, expected [N, S, S, 1]")
        graph = [d for d in shape[1:3] if isinstance(d, int)]  # symbolic dimensions take any size
        if any(d != self.input_size for d in graph):
            raise ModelError(
                f"model {self.path}: metadata input_size is {self.input_size} "
                f"but its graph takes {shape[1]}x{shape[2]} inputs"
            )
        probs = self.predict(np.full((2, self.input_size, self.input_size), 128, dtype=np.uint8))
        if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3) or probs.min() < 0:
            raise ModelError(f"model {self.path} output rows are not probabilities: {probs.tolist()}")


def input_size(path: Path) -> int:
    """The face size (pixels per side) the model at ``path`` takes, from its metadata.

    Detect crops faces at this size: the one place it is written down is the model.
    """
    return EmotionModel(path, intra_op_threads=1).input_size


def _labels(path: Path, meta: dict[str, str]) -> tuple[str, ...]:
    if "labels" not in meta:
        raise ModelError(f"model {path} has no 'labels' metadata (keys: {sorted(meta)})")
    try:
        labels = json.loads(meta["labels"])
    except json.JSONDecodeError as exc:
        raise ModelError(f"model {path}: metadata 'labels' is not JSON: {meta['labels']!r}") from exc
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelError(f"model {path}: metadata 'labels' must be a list of strings, got {labels!r}")
    return tuple(labels)


def _input_size(path: Path, meta: dict[str, str]) -> int:
    raw = meta.get("input_size", "")
    if not raw.isdigit():
        raise ModelError(f"model {path}: metadata 'input_size' is {raw!r}, expected an integer")
    return int(raw)
