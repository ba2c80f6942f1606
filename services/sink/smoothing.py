"""Per-track smoothing of the emotion probabilities, and the summary of each ended track.

Each track's probabilities are averaged exponentially over capture time:
``avg += (1 - exp(-dt / tau)) * (p - avg)``, so a time constant of ``tau`` seconds means
the same thing at 30 FPS and at 5, and a dropped frame changes nothing. A face without a
track (id 0) is not smoothed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emopipe.messages import Results


@dataclass(frozen=True)
class Smoothed:
    emotion: str
    confidence: float
    probabilities: tuple[float, ...] = ()  # the track's average, in the model's label order


@dataclass
class TrackState:
    camera: str
    track: int
    first_seen: float
    last_seen: float
    average: np.ndarray
    frames: int = 1
    labels: Counter[str] = field(default_factory=Counter)  # frames per smoothed label
    total: np.ndarray = field(init=False)  # the sum of the frames' own probabilities (not smoothed)

    def __post_init__(self) -> None:
        self.total = self.average.copy()

    def summary(self, label_order: tuple[str, ...]) -> dict[str, Any]:
        """The ``--tracks`` line: how long the face was seen, its share of each smoothed emotion and
        the mean of its frames' probabilities."""
        return {
            "camera": self.camera,
            "track": self.track,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "seconds": round(self.last_seen - self.first_seen, 3),
            "frames": self.frames,
            "emotions": {label: round(self.labels[label] / self.frames, 4) for label in label_order},
            "probabilities": {
                label: round(float(p) / self.frames, 6) for label, p in zip(label_order, self.total, strict=True)
            },
        }


class Smoother:
    """Smoothing state of every camera's live tracks; a track unseen ``timeout_s`` has ended."""

    def __init__(self, tau_s: float, timeout_s: float) -> None:
        self.tau_s = tau_s
        self.timeout_s = timeout_s
        self.tracks: dict[tuple[str, int], TrackState] = {}
        self.labels: tuple[str, ...] = ()

    def update(self, results: Results) -> list[Smoothed]:
        """The smoothed label of each face of ``results``, in order."""
        self.labels = results.labels
        out = []
        for face in results.faces:
            probs = np.asarray(face.probabilities, dtype=np.float64)
            if face.track == 0:
                out.append(Smoothed(face.emotion, face.confidence, face.probabilities))
                continue
            state = self.tracks.get((results.camera, face.track))
            if state is None:
                state = TrackState(results.camera, face.track, results.ts, results.ts, probs)
                self.tracks[(results.camera, face.track)] = state
            else:
                dt = max(0.0, results.ts - state.last_seen)
                gain = 1.0 - math.exp(-dt / self.tau_s) if self.tau_s > 0 else 1.0
                state.average = state.average + gain * (probs - state.average)
                state.last_seen = max(state.last_seen, results.ts)
                state.total = state.total + probs
                state.frames += 1
            best = int(np.argmax(state.average))
            smoothed = Smoothed(results.labels[best], float(state.average[best]), tuple(map(float, state.average)))
            state.labels[smoothed.emotion] += 1
            out.append(smoothed)
        return out

    def ended(self, camera: str, now: float | None) -> list[TrackState]:
        """Remove and return ``camera``'s tracks unseen for ``timeout_s`` before ``now``
        (capture time of its newest result); ``now=None``: the camera ended, all of them."""
        gone = [
            key
            for key, state in self.tracks.items()
            if key[0] == camera and (now is None or now - state.last_seen > self.timeout_s)
        ]
        return sorted((self.tracks.pop(key) for key in gone), key=lambda s: s.track)
