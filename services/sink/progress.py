"""Progress of a run on files: per camera, frames written of the total, FPS and ETA; a summary at the end.

On a terminal each camera gets a tqdm bar; otherwise (CI, a log file) a line per camera is
logged every ``interval_s``. Live and looped sources have no total and no progress line.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import cv2
from tqdm import tqdm

from emopipe.config import SourceConfig, resolve_path
from services.capture.sources import folder_images, video_property

log = logging.getLogger("emopipe.sink")


def expected_frames(src: SourceConfig) -> int | None:
    """The frames a file or folder source will deliver; None for a live or looped source, or a
    video that does not say."""
    if src.is_live or src.loop:
        return None
    path = resolve_path(src.uri)
    if path.is_dir():
        return len(folder_images(src))
    count = int(video_property(path, cv2.CAP_PROP_FRAME_COUNT))
    return count if count > 0 else None


@dataclass
class Camera:
    total: int | None
    frames: int = 0
    faces: int = 0
    tracks: int = 0
    bar: tqdm | None = None
    started: float = field(default_factory=time.monotonic)
    media_s: float = 0.0  # media time of the newest frame written (lossless runs on files)

    def line(self, name: str) -> str:
        seconds = max(time.monotonic() - self.started, 1e-9)
        fps = self.frames / seconds
        done = f"{self.frames}/{self.total} frames ({100 * self.frames / self.total:.0f}%)" if self.total else ""
        eta = (self.total - self.frames) / fps if fps > 0 and self.total else float("nan")
        return f"camera {name}: {done}, {fps:.1f} FPS, ETA {format_seconds(eta)}"


class Progress:
    def __init__(
        self,
        sources: Sequence[SourceConfig],
        interval_s: float,
        stream: TextIO | None = None,
        terminal: bool | None = None,
        media_time: bool = False,
    ) -> None:
        self.media_time = media_time  # frames carry media time: the summary gives the speed against real time
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.interval_s = interval_s
        self.started = time.monotonic()
        self.cameras = {src.id: Camera(expected_frames(src)) for src in sources}
        self.next_log = self.started + interval_s
        if self.terminal:
            size = shutil.get_terminal_size()  # a pty of no size (docker exec, script) reads as 80x24
            for position, (name, camera) in enumerate(self.cameras.items()):
                if camera.total:
                    camera.bar = tqdm(
                        total=camera.total,
                        desc=name,
                        unit="frame",
                        position=position,
                        file=self.stream,
                        leave=True,
                        ncols=size.columns,
                        nrows=max(size.lines, len(self.cameras) + 1),
                    )

    def written(self, camera: str, faces: int, ts: float = 0.0) -> None:
        state = self.cameras.get(camera)
        if state is None:
            state = self.cameras[camera] = Camera(None)
        state.frames += 1
        state.media_s = max(state.media_s, ts)
        state.faces += faces
        if state.bar is not None:
            state.bar.update(1)
        elif not self.terminal and self.interval_s > 0 and time.monotonic() >= self.next_log:
            self.next_log = time.monotonic() + self.interval_s
            for name, each in self.cameras.items():
                if each.total:
                    log.info("%s", each.line(name))

    def track_ended(self, camera: str) -> None:
        if camera in self.cameras:
            self.cameras[camera].tracks += 1

    def summary(
        self, outputs: Sequence[tuple[str, str]], interrupted: bool = False, unread: Mapping[str, int] | None = None
    ) -> str:
        """One line: frames, faces and tracks over every camera, the time taken, where the outputs
        are; a run stopped before its files ended says so first, with how far it got, and one
        whose files had frames that could not be read says how many, per camera."""
        frames = sum(c.frames for c in self.cameras.values())
        faces = sum(c.faces for c in self.cameras.values())
        tracks = sum(c.tracks for c in self.cameras.values())
        seconds = time.monotonic() - self.started
        where = "".join(f"; {what}: {path}" for what, path in outputs)
        media = max((c.media_s for c in self.cameras.values()), default=0.0)
        speed = f", {media / max(seconds, 1e-9):.1f}x real time" if self.media_time and media > 0 else ""
        if interrupted:
            total = sum(c.total or 0 for c in self.cameras.values())
            done = f"{frames} of {total}" if total else f"{frames}"
            return f"emopipe: interrupted after {done} frames: the output is incomplete{where}"
        line = (
            f"emopipe: {frames} frames, {faces} faces, {tracks} tracks from {len(self.cameras)} camera(s) "
            f"in {seconds:.1f} s ({frames / max(seconds, 1e-9):.1f} FPS){speed}{where}"
        )
        if unread:
            damaged = ", ".join(
                f"{camera}: {self.cameras[camera].frames} of {self.cameras[camera].frames + count} frames"
                if camera in self.cameras
                else f"{camera}: {count} frames unread"
                for camera, count in sorted(unread.items())
            )
            line = f"emopipe: incomplete source(s), frames that could not be read were skipped ({damaged}); " + line[9:]
        return line

    def close(self) -> None:
        for camera in self.cameras.values():
            if camera.bar is not None:
                camera.bar.close()


def format_seconds(seconds: float) -> str:
    if seconds != seconds:  # NaN: not known yet
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
