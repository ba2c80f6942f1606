"""What the viewer page shows beside each stream: live FPS and latency, the faces, the last minute's emotion mix."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

from emopipe.messages import Results
from services.sink.smoothing import Smoothed

#: FPS and latency are taken over this many seconds of written lines
RATE_WINDOW_S = 3.0
#: the emotion strip: one bucket per second, this many
MIX_SECONDS = 60


class Board:
    """Per-camera figures, updated by the sink's loop and read by the viewer's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: dict[str, deque[tuple[float, float]]] = {}  # (written, latency) per camera
        self._mix: dict[str, deque[tuple[int, Counter[str]]]] = {}  # (second, smoothed labels)
        self._faces: dict[str, list[dict[str, Any]]] = {}
        self.labels: tuple[str, ...] = ()

    def record(self, results: Results, smoothed: list[Smoothed], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self.labels = results.labels
            lines = self._lines.setdefault(results.camera, deque())
            lines.append((now, now - (results.wall or results.ts)))
            while lines and lines[0][0] < now - RATE_WINDOW_S:
                lines.popleft()
            mix = self._mix.setdefault(results.camera, deque())
            second = int(now)
            if not mix or mix[-1][0] != second:
                mix.append((second, Counter()))
            mix[-1][1].update(s.emotion for s in smoothed)
            while mix and mix[0][0] <= second - MIX_SECONDS:
                mix.popleft()
            self._faces[results.camera] = [
                {
                    "track": face.track,
                    "emotion": label.emotion,
                    "confidence": round(label.confidence, 3),
                    "probabilities": [round(p, 3) for p in label.probabilities],
                }
                for face, label in zip(results.faces, smoothed, strict=True)
            ]

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        with self._lock:
            cameras = {}
            for camera, lines in self._lines.items():
                recent = [lat for written, lat in lines if written >= now - RATE_WINDOW_S]
                latencies = sorted(recent)
                mix = {second: counts for second, counts in self._mix.get(camera, ())}
                cameras[camera] = {
                    "fps": round(len(recent) / RATE_WINDOW_S, 1),
                    "latency_ms": round(1000 * latencies[len(latencies) // 2]) if latencies else None,
                    "faces": self._faces.get(camera, []),
                    "mix": [dict(mix.get(s, {})) for s in range(int(now) - MIX_SECONDS + 1, int(now) + 1)],
                }
            return {"labels": list(self.labels), "cameras": cameras}
