"""Where annotated frames go: the web viewer, an OpenCV window, a recorded video."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from emopipe.config import CaptureConfig, SinkConfig, SourceConfig, resolve_path
from services.capture.sources import video_property
from services.sink.render import encode_jpeg
from services.sink.viewer import FrameStore

log = logging.getLogger(__name__)


def _show_window(camera: str, image: np.ndarray) -> None:
    cv2.imshow(f"emopipe {camera}", image)
    cv2.waitKey(1)


def record_path(base: Path, camera: str, several: bool) -> Path:
    """``out.mp4`` for one camera, ``out.<camera>.mp4`` for each of several."""
    return base.with_name(f"{base.stem}.{camera}{base.suffix}") if several else base


def recording_fps(src: SourceConfig, capture: CaptureConfig, fallback: float) -> float:
    """The rate a camera's recording plays at: its source's (capture's own rule: ``fps``, a
    video's rate, ``folder_fps`` for folders); ``fallback`` (``sink.record_fps``) for live
    cameras, whose rate no file states."""
    if src.fps > 0:
        return src.fps
    if src.is_live:
        return fallback
    path = resolve_path(src.uri)
    if path.is_dir():
        return capture.folder_fps
    native = video_property(path, cv2.CAP_PROP_FPS)
    return native if native > 0 else fallback


class Outputs:
    def __init__(
        self, cfg: SinkConfig, cameras: list[str], store: FrameStore | None, fps: dict[str, float] | None = None
    ) -> None:
        """``fps``: each camera's recording rate (default ``sink.record_fps``)."""
        self.cfg = cfg
        self.cameras = cameras
        self.store = store
        self.fps = fps or {}
        self.writers: dict[str, cv2.VideoWriter] = {}
        self.failed: dict[str, str] = {}  # output ("record", "show") -> why it was stopped

    @property
    def drawing(self) -> bool:
        """Whether anything draws frames at all (a viewer, --record, --show)."""
        return bool(self.cfg.record or self.cfg.show or self.store is not None)

    def wanted(self, camera: str) -> bool:
        """Whether anything would use an annotated frame of ``camera`` now."""
        return bool(self.cfg.record or self.cfg.show or (self.store is not None and self.store.wanted(camera)))

    def show(self, camera: str, image: np.ndarray) -> None:
        if self.store is not None:
            self.store.put(camera, encode_jpeg(image, self.cfg.jpeg_quality))
        if self.cfg.record and "record" not in self.failed:
            self._guarded("record", lambda: self._record(camera, image))
        if self.cfg.show and "show" not in self.failed:
            self._guarded("show", lambda: _show_window(camera, image))

    def _guarded(self, output: str, action: Callable[[], None]) -> None:
        """Run one output's work; a failure is said once and stops that output only: the JSON
        lines and the other outputs go on, and the run's exit status says an output failed."""
        try:
            action()
        except (OSError, cv2.error) as exc:
            self.failed[output] = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            log.error(
                "%s failed: %s; %s stopped, the JSON lines and the other outputs go on",
                output,
                self.failed[output],
                output,
            )

    def _record(self, camera: str, image: np.ndarray) -> None:
        writer = self.writers.get(camera)
        if writer is None:
            path = record_path(resolve_path(self.cfg.record), camera, len(self.cameras) > 1)
            path.parent.mkdir(parents=True, exist_ok=True)
            size = (image.shape[1], image.shape[0])
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")  # type: ignore[attr-defined]
            writer = cv2.VideoWriter(str(path), fourcc, self.fps.get(camera, self.cfg.record_fps), size)
            if not writer.isOpened():
                raise OSError(f"cannot open {path} for recording")
            log.info("recording camera %s to %s", camera, path)
            self.writers[camera] = writer
        writer.write(image)

    def paths(self, events: Path | None, tracks: Path | None) -> list[tuple[str, str]]:
        """What this run wrote and where: ``[("events", path), ("tracks", path), ("video", paths)]``."""
        found = [(what, str(path)) for what, path in (("events", events), ("tracks", tracks)) if path is not None]
        if self.writers:
            base = resolve_path(self.cfg.record)
            several = len(self.cameras) > 1
            videos = (record_path(base, camera, several) for camera in self.cameras if camera in self.writers)
            found.append(("video", ", ".join(str(v) for v in videos)))
        return found

    def close(self) -> None:
        for writer in self.writers.values():
            writer.release()
        if self.cfg.show:
            cv2.destroyAllWindows()
