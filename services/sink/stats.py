"""What the viewer page shows beside each stream: live FPS and latency, the faces, the last minute's emotion
mix, and each face track's smoothed label over the last minute."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

from emopipe.messages import Results
from services.sink.smoothing import Smoothed

#: FPS and latency are taken over this many seconds of written lines
RATE_WINDOW_S = 3.0
#: the emotion strip and each track's history: one bucket per second, this many
MIX_SECONDS = 60


class Board:
    """Per-camera figures, updated by the sink's loop and read by the viewer's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: dict[str, deque[tuple[float, float]]] = {}  # (written, latency) per camera
        self._mix: dict[str, deque[tuple[int, Counter[str]]]] = {}  # (second, smoothed labels)
        self._faces: dict[str, list[dict[str, Any]]] = {}
        # per camera and live track, (second, smoothed labels that second): at most MIX_SECONDS buckets
        self._history: dict[str, dict[int, deque[tuple[int, Counter[str]]]]] = {}
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
            self._record_history(results, smoothed, second)
            self._faces[results.camera] = [
                {
                    "track": face.track,
                    "emotion": label.emotion,
                    "confidence": round(label.confidence, 3),
                    "probabilities": [round(p, 3) for p in label.probabilities],
                }
                for face, label in zip(results.faces, smoothed, strict=True)
            ]

    def _record_history(self, results: Results, smoothed: list[Smoothed], second: int) -> None:
        tracks = self._history.setdefault(results.camera, {})
        for face, label in zip(results.faces, smoothed, strict=True):
            if face.track == 0:  # an untracked face has no history
                continue
            history = tracks.setdefault(face.track, deque())
            if not history or history[-1][0] != second:
                history.append((second, Counter()))
            history[-1][1][label.emotion] += 1
        for track in list(tracks):  # a track the sink never reported ended (a stalled camera) ages out too
            history = tracks[track]
            while history and history[0][0] <= second - MIX_SECONDS:
                history.popleft()
            if not history:
                del tracks[track]

    def end_track(self, camera: str, track: int) -> None:
        """Forget an ended face track's history (the sink's smoother ended it)."""
        with self._lock:
            self._history.get(camera, {}).pop(track, None)

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
                    "history": self._history_snapshot(camera, int(now)),
                }
            return {"labels": list(self.labels), "now": int(now), "cameras": cameras}

    def _history_snapshot(self, camera: str, now: int) -> dict[str, list[list[Any]]]:
        """Per live track (its id as a string, as JSON keys are): ``[second, label]`` for each of the
        last MIX_SECONDS seconds it was seen, oldest first; the label is that second's most frequent
        smoothed label (the first seen of equally frequent ones)."""
        out = {}
        for track, history in sorted(self._history.get(camera, {}).items()):
            seconds = [[t, labels.most_common(1)[0][0]] for t, labels in history if t > now - MIX_SECONDS]
            if seconds:
                out[str(track)] = seconds
        return out
