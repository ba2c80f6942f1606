"""Frame sources (webcam, video file, stream URL, folder of images), each read in its own thread."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from emopipe.config import CaptureConfig, SourceConfig, resolve_path
from emopipe.metrics import Metrics
from emopipe.redact import redact
from emopipe.waker import Waker
from services.capture import probe

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class SourceError(RuntimeError):
    """A source that cannot be opened or read; the message names it."""


@dataclass(frozen=True)
class Captured:
    """One frame read from a source, or the source's end (``image is None``)."""

    camera: str
    seq: int
    ts: float  # media time (lossless file runs) or capture time
    image: np.ndarray | None
    read_s: float = 0.0
    wall: float = 0.0  # when it was read (epoch)
    unread: int = 0  # the end of a file: its frames that could not be read

    @property
    def is_end(self) -> bool:
        return self.image is None


class Mailbox:
    """Hands frames from a reader thread to the publishing thread.

    Lossless: a full mailbox makes the reader wait. Live: the oldest frame is dropped.
    """

    def __init__(self, capacity: int, lossless: bool, wake: threading.Event | Waker) -> None:
        self._items: deque[Captured] = deque()
        self._cond = threading.Condition()
        self.capacity = capacity
        self.lossless = lossless
        self.wake = wake

    def put(self, item: Captured, stop: threading.Event) -> int:
        """Add an item; returns the number of stale frames dropped to make room."""
        dropped = 0
        with self._cond:
            while self.lossless and len(self._items) >= self.capacity and not stop.is_set():
                self._cond.wait(0.1)
            if len(self._items) >= self.capacity and not item.is_end:
                self._items.popleft()
                dropped = 1
            self._items.append(item)
        self.wake.set()
        return dropped

    def take_all(self) -> list[Captured]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        return items


def video_property(path: Path, prop: int) -> float:
    """One of OpenCV's properties of the video file at ``path`` (0 when it does not say)."""
    cap = cv2.VideoCapture(str(path))
    try:
        return float(cap.get(prop))
    finally:
        cap.release()


#: a damaged file: reading goes on past this many unreadable frames in a row at most (then it has ended)
MAX_UNREADABLE_RUN = 300


def frame_rate(src: SourceConfig, cap_cfg: CaptureConfig, native: float) -> float:
    if src.fps > 0:
        return src.fps
    if native > 0:
        return native
    return cap_cfg.folder_fps


RETURN_POLL_S = 0.5  # how often a camera that does not answer is asked whether it is back
_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


def use_rtsp_transport(transport: str) -> None:
    """Make OpenCV's FFmpeg backend open RTSP over ``transport``. OpenCV 4 takes FFmpeg's
    options only from this variable (``key;value`` pairs joined by ``|``), read at each open;
    the variable is process-wide and every camera of a capture process shares the config's
    transport, so setting it before an open is safe. Options the user set are kept."""
    current = [o for o in os.environ.get(_OPTIONS, "").split("|") if o and not o.startswith("rtsp_transport;")]
    os.environ[_OPTIONS] = "|".join([*current, f"rtsp_transport;{transport}"])


def open_video(
    src: SourceConfig, timeout_s: float = 0.0, rtsp_transport: str = "tcp", decode_threads: int = 0
) -> cv2.VideoCapture:
    """Open a webcam, file or stream; a stream given ``timeout_s`` fails to open, or stops
    reading, after that long without data (a stalled camera is then reopened). RTSP goes
    over ``rtsp_transport`` (tcp or udp). A file or stream is decoded by ``decode_threads``
    of FFmpeg's (0: FFmpeg's choice)."""
    target: int | str = int(src.uri) if src.uri.isdigit() else src.uri
    if isinstance(target, str) and not src.is_live and not resolve_path(target).is_file():
        raise SourceError(f"source {src.id}: video file {target} does not exist")
    if isinstance(target, str) and not src.is_live:
        target = str(resolve_path(target))
    if isinstance(target, str) and target.lower().startswith("rtsp"):
        use_rtsp_transport(rtsp_transport)
    params: list[int] = []
    if isinstance(target, str) and src.is_live and timeout_s > 0:
        ms = int(timeout_s * 1000)
        params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    if isinstance(target, str) and decode_threads > 0:
        params += [cv2.CAP_PROP_N_THREADS, decode_threads]
    cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params) if params else cv2.VideoCapture(target)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"source {src.id}: cannot open {redact(src.uri)}")
    return cap


def folder_images(src: SourceConfig) -> list[Path]:
    folder = resolve_path(src.uri)
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SourceError(f"source {src.id}: folder {folder} holds no images ({sorted(IMAGE_SUFFIXES)})")
    return images


@dataclass
class Reading:
    """What reading a file or folder met: the frames it could not read, each also told to ``dropped``."""

    name: str  # the source, in log lines
    dropped: Callable[[int], object] = lambda count: None
    unread: int = 0

    def skip(self, count: int) -> None:
        self.unread += count
        self.dropped(count)


def timed_reads(cap: cv2.VideoCapture) -> Iterator[tuple[np.ndarray | None, float]]:
    """Every read of ``cap`` with the seconds it took; a failed read gives None (the caller
    decides whether it ends the source). Releases ``cap`` when the caller is done."""
    try:
        while True:
            start = time.perf_counter()
            ok, image = cap.read()
            yield (image if ok else None), time.perf_counter() - start
    finally:
        cap.release()


def live_frames(cap: cv2.VideoCapture) -> Iterator[tuple[np.ndarray, float]]:
    """A camera's or stream's frames as read, with the seconds each read took, until a read fails."""
    for image, read_s in timed_reads(cap):
        if image is None:
            return
        yield image, read_s


def file_frames(cap: cv2.VideoCapture, rate: float, reading: Reading) -> Iterator[tuple[np.ndarray, float, float]]:
    """A video file's frames: (image, seconds the read took, media time). The media time is
    OpenCV's position after the read (a container without times, whose position does not
    advance: frames / ``rate``). An undecodable stretch is skipped, logged with where it is
    and counted in ``reading`` (OpenCV's decoder resumes at the next frame it can decode, up
    to the frame count the file declares); a file that ends before that count counts the rest."""
    declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    delivered = failed = 0
    last_ts = -1.0
    for image, read_s in timed_reads(cap):
        if image is None:
            failed += 1
            if declared <= 0 or delivered + reading.unread + failed > declared or failed > MAX_UNREADABLE_RUN:
                break
            continue
        position = round(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0, 6)
        media_ts = position if position > last_ts else round((delivered + reading.unread + failed) / rate, 6)
        if failed:
            log.error(
                "source %s: %d frame(s) of the file could not be decoded, between %.3f s and %.3f s; skipped",
                reading.name,
                failed,
                max(last_ts, 0.0),
                media_ts,
            )
            reading.skip(failed)
            failed = 0
        last_ts = media_ts
        delivered += 1
        yield image, read_s, media_ts
    missing = declared - delivered - reading.unread
    if missing > 0:
        log.error(
            "source %s: the file ended after %d of the %d frames it declares",
            reading.name,
            delivered + reading.unread,
            declared,
        )
        reading.skip(missing)


def folder_frames(paths: list[Path], rate: float, reading: Reading) -> Iterator[tuple[np.ndarray, float, float]]:
    """A folder's images (``folder_images``): (image, seconds the read took, index / ``rate``); an
    image that cannot be read is skipped, named in the log and counted in ``reading``."""
    for index, path in enumerate(paths):
        start = time.perf_counter()
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            log.error("source %s: cannot read image %s, skipped", reading.name, path)
            reading.skip(1)
            continue
        yield image, time.perf_counter() - start, round(index / rate, 6)


class SourceReader(threading.Thread):
    """Reads one source into a mailbox until it ends or ``stop`` is set.

    With ``media_time`` (lossless runs on files), a frame's time is its place in the file
    (OpenCV's position; a folder's images: index / fps), not the clock's: the run's lines
    then do not depend on how fast the machine is. Files are played at their frame rate when
    ``capture.pace`` says so ("auto": in live runs only)."""

    def __init__(
        self,
        src: SourceConfig,
        cap_cfg: CaptureConfig,
        mailbox: Mailbox,
        stop: threading.Event,
        metrics: Metrics,
        media_time: bool = False,
    ) -> None:
        super().__init__(name=f"source-{src.id}", daemon=True)
        self.src = src
        self.cap_cfg = cap_cfg
        self.mailbox = mailbox
        self.stop = stop
        self.metrics = metrics
        self.media_time = media_time and not src.is_live
        self.paced = cap_cfg.pace == "on" or (cap_cfg.pace == "auto" and not media_time)
        self.seq = 0
        self.reading = Reading(src.id)  # what the current play of the file could not read
        self.media_ts = 0.0  # the time of the frame being delivered (media_time)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.src.is_live:
                self._run_live()
            else:
                self._run_finite()
        except (SourceError, OSError, cv2.error) as exc:
            log.error("%s", exc)
            self.error = exc
        finally:
            self.metrics.camera_up.labels(camera=self.src.id).set(0)
            self.mailbox.wake.set()

    # ------------------------------------------------------------ finite sources

    def _run_finite(self) -> None:
        while not self.stop.is_set():
            self._play_once()
            if not self.src.loop or self.stop.is_set():
                break
            log.info("source %s: looping", self.src.id)
        if not self.stop.is_set():
            unread = self.reading.unread
            if unread:
                log.error(
                    "source %s: ended after %d frames; %d frame(s) of the file could not be read",
                    self.src.id,
                    self.seq,
                    unread,
                )
            else:
                log.info("source %s: ended after %d frames", self.src.id, self.seq)
            now = time.time()
            ts = self.media_ts if self.media_time else now
            self.mailbox.put(Captured(self.src.id, self.seq, ts, None, wall=now, unread=unread), self.stop)

    def _play_once(self) -> None:
        dropped = self.metrics.frames_dropped.labels(stage="capture", reason="read_error")
        reading = Reading(self.src.id, dropped.inc)
        if resolve_path(self.src.uri).is_dir():
            rate = frame_rate(self.src, self.cap_cfg, 0.0)
            frames = folder_frames(folder_images(self.src), rate, reading)
        else:
            cap = open_video(self.src, decode_threads=self.cap_cfg.decode_threads)
            rate = frame_rate(self.src, self.cap_cfg, cap.get(cv2.CAP_PROP_FPS))
            frames = file_frames(cap, rate, reading)
        self.reading = reading
        interval = 1.0 / rate if self.paced else 0.0
        due = time.monotonic()
        start_ts = self.media_ts + 1.0 / rate if self.seq else 0.0  # a loop's times go on from the last play's
        for image, read_s, media_ts in frames:
            if self.stop.is_set():
                return
            self.media_ts = round(start_ts + media_ts, 6)
            self._deliver(image, read_s)
            due = max(due + interval, time.monotonic() - interval)  # a slow pipeline does not cause a burst
            self.stop.wait(max(0.0, due - time.monotonic()))

    # ------------------------------------------------------------ live sources

    def _run_live(self) -> None:
        backoff = self.cap_cfg.reconnect_backoff_s
        first = True
        reported = ""  # what this outage was reported as: said once, not at every retry
        while not self.stop.is_set():
            if not first:
                self.metrics.camera_reconnects.labels(camera=self.src.id).inc()
            first = False
            try:
                cap = open_video(
                    self.src, self.cap_cfg.stall_timeout_s, self.cap_cfg.rtsp_transport, self.cap_cfg.decode_threads
                )
            except SourceError as exc:
                reason = probe.diagnose(self.src.uri)
                message = self._outage(exc, reason)
                if message != reported:
                    log.error("%s", message)
                    reported = message
                else:
                    log.debug("%s (again)", message)
                self._wait_for_return(backoff, reason)
                backoff = min(backoff * 2, self.cap_cfg.reconnect_backoff_max_s)
                continue
            if reported:
                log.info("source %s: %s is back", self.src.id, redact(self.src.uri))
                reported = ""
            if self._read_live(cap):
                backoff = self.cap_cfg.reconnect_backoff_s
            log.error("source %s: %s stopped delivering frames; reconnecting", self.src.id, redact(self.src.uri))
            self.stop.wait(backoff)

    def _outage(self, exc: SourceError, reason: str | None) -> str:
        """The one line an outage is reported with (no credentials in it)."""
        most = self.cap_cfg.reconnect_backoff_max_s
        if reason == probe.REFUSED:
            return (
                f"camera {self.src.id} refused the credentials (401): check the user and password "
                f"(retrying with backoff up to {most:g} s)"
            )
        if reason == probe.UNREACHABLE:
            return f"source {self.src.id}: {redact(self.src.uri)} does not answer; reconnecting as soon as it does"
        return f"{exc}; retrying with backoff up to {most:g} s"

    def _wait_for_return(self, backoff: float, reason: str | None) -> None:
        """Wait ``backoff``; a camera whose host did not answer is instead asked every
        RETURN_POLL_S with a TCP connect (cheap for it), and retried the moment it answers."""
        if reason != probe.UNREACHABLE:
            self.stop.wait(backoff)
            return
        deadline = time.monotonic() + self.cap_cfg.reconnect_backoff_max_s
        while not self.stop.wait(RETURN_POLL_S) and time.monotonic() < deadline:
            if probe.reachable(self.src.uri, RETURN_POLL_S):
                return

    def _read_live(self, cap: cv2.VideoCapture) -> bool:
        """Read until the source fails; True if it delivered at least one frame."""
        delivered = False
        shape = None
        for image, read_s in live_frames(cap):
            if self.stop.is_set():
                break
            if shape is not None and image.shape != shape:
                log.error("source %s: a frame of %s after frames of %s; reopening", self.src.id, image.shape, shape)
                self.metrics.frames_dropped.labels(stage="capture", reason="wrong_size").inc()
                cap.release()
                break
            shape = image.shape
            self._deliver(image, read_s)
            delivered = True
        self.metrics.camera_up.labels(camera=self.src.id).set(0)
        return delivered

    def _deliver(self, image: np.ndarray, read_s: float) -> None:
        self.metrics.camera_up.labels(camera=self.src.id).set(1)
        now = time.time()
        item = Captured(self.src.id, self.seq, self.media_ts if self.media_time else now, image, read_s, wall=now)
        self.seq += 1
        if self.mailbox.put(item, self.stop):
            self.metrics.frames_dropped.labels(stage="capture", reason="stale").inc()
