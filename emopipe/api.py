"""The Python API: the pipeline's detection, tracking, model and smoothing in the caller's process.

    import emopipe
    for result in emopipe.analyze("clip.mp4"):  # one FrameResult per frame, in order
        ...
    faces = emopipe.analyze_image("photo.jpg")  # one picture's faces

No ZeroMQ, no ports, no processes: each frame goes through the very code of the stages, in
turn: ``services.detect.main.Detect`` (the Haar cascade on the detection schedule, and the
face tracker), ``services.classify.main.classify`` (the ONNX model, with the preprocessing its
metadata declares), and ``services.sink.smoothing.Smoother``; a result's ``to_dict()`` is
``services.sink.events.event``, the function that writes ``emopipe run --events``. The
configuration is the pipeline's (``emopipe.config``): a TOML file or a ``Config``, then the
``EMOPIPE__SECTION__KEY`` environment variables as every stage reads them, then keyword
overrides ``section__key=value`` (``detect__min_size=60``).

This module is the top of the stack: it imports ``services``, which import the rest of
``emopipe``; ``emopipe/__init__.py`` therefore loads it lazily, on first use of
``emopipe.analyze`` and the other names below, so a stage importing ``emopipe.messages`` does
not import every other stage.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from emopipe import config as config_mod
from emopipe.config import Config, ConfigError, SourceConfig, resolve_path
from emopipe.messages import Box, FaceResult, Frame, Results, check_camera_id
from emopipe.redact import redact
from services.capture.sources import (
    Reading,
    SourceError,
    file_frames,
    folder_frames,
    folder_images,
    frame_rate,
    live_frames,
    open_video,
)
from services.classify.main import classify
from services.classify.model import EmotionModel
from services.detect.detector import clip_box
from services.detect.main import Detect
from services.sink.events import event, event_columns, event_rows
from services.sink.smoothing import Smoothed, Smoother

__all__ = ["Face", "FrameResult", "SourceError", "analyze", "analyze_image", "rows"]

log = logging.getLogger("emopipe.api")

#: what ``analyze`` takes: a video file, a folder of images, a webcam index or a stream URL
Source = int | str | os.PathLike[str]
#: what ``config=`` takes: a TOML file (or several, later ones winning), a ``Config``, or None (defaults)
ConfigLike = Config | str | os.PathLike[str] | None
#: a source's frames, each with its time in seconds
Frames = Generator[tuple[np.ndarray, float], None, None]

#: a still smaller than this (pixels, longest side) is scaled up to it first
SMALL_STILL = 160
#: the camera id of ``analyze_image``'s picture
IMAGE_CAMERA = "image"


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Face:
    """One face of one frame: what ``emopipe run --events`` writes for it.

    ``box`` is in the frame's pixels (``box.x``, ``.y``, ``.w``, ``.h``); ``track`` the face's
    track id (the same face keeps it from frame to frame; in ``analyze_image``, 1, 2, ...);
    ``emotion`` and ``confidence`` the model's answer for this frame and ``probabilities`` all
    of them, in the model's label order (``FrameResult.labels``); ``smoothed`` the track's
    answer averaged over time (``sink.smooth_s``): ``smoothed.emotion``, ``.confidence`` and the
    averaged ``.probabilities``. Numbers are the model's own (the JSON line rounds them to 6
    decimals: ``to_dict()`` does too)."""

    box: Box
    track: int
    emotion: str
    confidence: float
    probabilities: tuple[float, ...]
    smoothed: Smoothed

    def to_dict(self) -> dict[str, Any]:
        """This face as an element of the JSON line's ``faces`` list."""
        line: dict[str, Any] = event(_results(IMAGE_CAMERA, 0, 0.0, (self,), ()), [self.smoothed])
        return dict(line["faces"][0])

    def _result(self) -> FaceResult:
        return FaceResult(self.box, self.emotion, self.confidence, self.probabilities, self.track)


@dataclass(frozen=True)
class FrameResult:
    """One frame's faces: the fields of one ``emopipe run --events`` JSON line.

    ``frame`` counts the source's frames from 0; ``ts`` is the frame's time in seconds: for a
    video file its media time (its position in the file), for a folder of images index /
    ``capture.folder_fps``, for a webcam or a stream the clock's (epoch seconds) when it was
    read. ``labels`` is the model's label order (what ``probabilities`` follow); it is not part
    of the line."""

    camera: str
    frame: int
    ts: float
    faces: tuple[Face, ...]
    labels: tuple[str, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Exactly the JSON line ``emopipe run --events`` writes for this frame (the sink's own
        function makes it), e.g. ``json.dumps(result.to_dict())``."""
        results = _results(self.camera, self.frame, self.ts, self.faces, self.labels)
        return event(results, [f.smoothed for f in self.faces])


def _results(camera: str, frame: int, ts: float, faces: tuple[Face, ...], labels: tuple[str, ...]) -> Results:
    return Results(camera, frame, ts, tuple(f._result() for f in faces), labels)


def _frame_result(results: Results, smoothed: list[Smoothed]) -> FrameResult:
    faces = tuple(
        Face(f.box, f.track, f.emotion, f.confidence, f.probabilities, s)
        for f, s in zip(results.faces, smoothed, strict=True)
    )
    return FrameResult(results.camera, results.seq, results.ts, faces, results.labels)


def rows(results: Iterable[FrameResult]) -> Iterator[dict[str, Any]]:
    """One flat dict per face, the columns of ``emopipe run --events FILE.csv``: ``camera``,
    ``frame``, ``ts``, ``track``, ``x``, ``y``, ``w``, ``h``, ``emotion``, ``confidence``,
    ``smoothed_emotion``, ``smoothed_confidence`` and ``p_<label>`` per class in the model's
    order. A frame without a face gives no row. ``pandas.DataFrame(emopipe.rows(results))``
    is a table of them."""
    for result in results:
        columns = event_columns(result.labels)
        for row in event_rows(result.to_dict(), result.labels):
            yield dict(zip(columns, row, strict=True))


# ---------------------------------------------------------------- configuration


def resolve_config(config: ConfigLike = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """The configuration ``analyze`` runs with: ``config`` (a TOML path, loaded as every stage
    loads it, environment overrides included; a ``Config`` as it is; None: the defaults and the
    environment), then ``overrides``: ``{"detect__min_size": 60}`` sets ``detect.min_size``.
    Checked like a file: an unknown key or a wrong type is a ConfigError naming it."""
    cfg = config if isinstance(config, Config) else config_mod.load(None if config is None else os.fspath(config))
    if not overrides:
        return cfg
    data = dataclasses.asdict(cfg)
    for name, value in overrides.items():
        section, sep, key = name.partition("__")
        if not sep or not section or not key or "__" in key:
            raise ConfigError(f"override {name}={value!r}: expected SECTION__KEY=VALUE, e.g. detect__min_size=60")
        if section == "sources" or not isinstance(data.get(section), dict):
            raise ConfigError(f"override {name}: unknown section '{section}' (the source is analyze's argument)")
        data[section][key] = os.fspath(value) if isinstance(value, os.PathLike) else value
    try:
        return config_mod.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"overrides {', '.join(overrides)}: {exc}") from exc


class _Stages:
    """The stages' components, loaded once: detection and tracking, the model, the smoother."""

    def __init__(self, cfg: Config, every_frame: bool = False) -> None:
        self.model = EmotionModel(resolve_path(cfg.classify.model), cfg.classify.intra_op_threads)
        detect_cfg = dataclasses.replace(cfg.detect, every_frame=True) if every_frame else cfg.detect
        self.detect = Detect(detect_cfg, self.model.input_size)
        self.smoother = Smoother(cfg.sink.smooth_s, cfg.detect.track_timeout_s)

    def __call__(self, frame: Frame) -> FrameResult:
        results = classify(self.model, self.detect(frame))
        smoothed = self.smoother.update(results)
        self.smoother.ended(frame.camera, frame.ts)  # the sink's bookkeeping: ended tracks are let go
        return _frame_result(results, smoothed)


# ---------------------------------------------------------------- videos, folders, cameras


def analyze(
    source: Source, config: ConfigLike = None, *, camera: str = "cam0", **overrides: Any
) -> Iterator[FrameResult]:
    """Analyse every frame of ``source`` in this process; yields one ``FrameResult`` per frame, in order.

    ``source``: a video file, a folder of images (in name order), a webcam index (``0``) or a
    stream URL (``rtsp://``, ``http://``...). ``config``: a TOML file or a ``Config`` (default:
    the defaults), then ``EMOPIPE__*`` environment variables, then ``overrides`` as
    ``section__key=value`` (``detect__min_size=60``, ``sink__smooth_s=0.5``). The keys of
    detection, tracking and smoothing and ``classify.model`` apply; the source is this
    argument, not ``[[sources]]``, and nothing of the bus, ports, workers or outputs applies.

    As ``emopipe run --source SOURCE --events FILE`` in lossless mode: a file's or folder's
    every frame is analysed, on media time (``FrameResult.ts``), so the same file gives the
    same results however fast the machine is. A camera or stream is read as fast as the
    loop takes its results, on the clock's time; it ends when the camera stops delivering
    (it is not reopened, as the pipeline would). Stop early with ``break`` (or the iterator's
    ``close()``): the source is released then.

    The source is opened before this returns: a missing file raises FileNotFoundError, a
    file that is not a video, a folder without images or a camera that does not open
    SourceError, a bad config key ConfigError, each naming it."""
    check_camera_id(camera)
    cfg = resolve_config(config, overrides)
    frames = _open(source, camera, cfg)
    return _analysed(frames, camera, _Stages(cfg))


def _analysed(frames: Frames, camera: str, stages: _Stages) -> Iterator[FrameResult]:
    try:
        for seq, (image, ts) in enumerate(frames):
            yield stages(Frame(camera, seq, ts, image))
    finally:
        frames.close()  # a loop left early (break) releases the capture now


def _open(source: Source, camera: str, cfg: Config) -> Frames:
    """The frames of ``source`` with their times, the source opened (or refused) now."""
    if isinstance(source, bool) or not isinstance(source, (int, str, os.PathLike)):
        raise TypeError(f"source must be a path, a folder, a webcam index or a URL, got {source!r}")
    uri = str(source) if isinstance(source, int) else os.fspath(source)
    src = SourceConfig(id=camera, uri=uri)
    if src.is_live:
        cap = open_video(src, cfg.capture.stall_timeout_s, cfg.capture.rtsp_transport, cfg.capture.decode_threads)
        return _live_frames(cap, src)
    path = resolve_path(uri)
    if path.is_dir():
        return _folder_frames(dataclasses.replace(src, uri=str(path)), cfg)
    if not path.is_file():
        # a URL of a scheme not taken for a stream is looked for as a path: shown redacted
        where = "" if "://" in uri else f" ({path.absolute()})"
        raise FileNotFoundError(f"source {redact(uri)}: no such file or folder{where}")
    cap = open_video(dataclasses.replace(src, uri=str(path)), decode_threads=cfg.capture.decode_threads)
    return _file_frames(cap, frame_rate(src, cfg.capture, cap.get(cv2.CAP_PROP_FPS)), src)


def _file_frames(cap: cv2.VideoCapture, rate: float, src: SourceConfig) -> Frames:
    """A video file's frames with their media time, read by the capture stage's rule
    (``sources.file_frames``: an undecodable stretch is skipped and named)."""
    return ((image, ts) for image, _, ts in file_frames(cap, rate, Reading(src.id)))


def _folder_frames(src: SourceConfig, cfg: Config) -> Frames:
    """A folder's images in name order, each at index / fps (``capture.folder_fps``); an image
    that cannot be read is skipped with an error naming it, as the capture stage does."""
    paths = folder_images(src)  # raises SourceError now if the folder holds no images
    images = folder_frames(paths, frame_rate(src, cfg.capture, 0.0), Reading(src.id))
    return ((image, ts) for image, _, ts in images)


def _live_frames(cap: cv2.VideoCapture, src: SourceConfig) -> Frames:
    count = 0
    for image, _ in live_frames(cap):
        count += 1
        yield image, time.time()
    log.warning("source %s: the camera stopped delivering frames after %d", src.id, count)


# ---------------------------------------------------------------- one picture


def analyze_image(
    image: np.ndarray | str | os.PathLike[str], config: ConfigLike = None, **overrides: Any
) -> list[Face]:
    """The faces of one picture: a path, or a BGR ``uint8`` array ``[H, W, 3]`` (grey ``[H, W]`` too).

    A still is a cut, with no track to follow: it is searched by the full-frame cascade
    (``detect.every_frame``), on the picture padded as ``emopipe evaluate`` pads a still
    (scaled up to 160 pixels when smaller, made square, its size again around it), so a
    tightly cropped face is found too. Boxes are in the picture's pixels, clipped to it;
    the model sees the face as found, padding included. ``track`` numbers the faces 1, 2, ...;
    ``smoothed`` is the face's own answer. ``config`` and ``overrides`` as for ``analyze``
    (a large photo goes faster with ``detect__downscale=2``).

    A missing file raises FileNotFoundError, one OpenCV cannot read SourceError, an array of
    another shape or type ValueError."""
    picture = _picture(image)
    still = PaddedStill.of(picture)
    stages = _Stages(resolve_config(config, overrides), every_frame=True)
    found = stages(Frame(IMAGE_CAMERA, 0, 0.0, still.image))
    height, width = picture.shape[:2]
    faces = []
    for face in found.faces:
        box = still.original_box(face.box, width, height)
        if box is not None:
            faces.append(dataclasses.replace(face, box=box))
    return faces


def _picture(image: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(
                f"image: expected a BGR uint8 array [H, W, 3] or grey [H, W], got {image.shape} {image.dtype}"
            )
        if min(image.shape[:2]) == 0:
            raise ValueError(f"image: an empty array {image.shape}")
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"image must be a path or a numpy array, got {type(image).__name__}")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image {path}: no such file")
    picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if picture is None:
        raise SourceError(f"image {path}: not an image OpenCV can read")
    return picture


@dataclass(frozen=True)
class PaddedStill:
    """A picture as the detector sees a still: scaled up to SMALL_STILL if smaller, made square
    and padded with half its side on each side (black), the picture's corner at ``offset``.
    ``emopipe evaluate`` frames its stills with it too (deploy/evaluate.py's ``pad_still``)."""

    image: np.ndarray
    scale: float
    offset: tuple[int, int]  # x, y

    @classmethod
    def of(cls, picture: np.ndarray) -> PaddedStill:
        h, w = picture.shape[:2]
        scale = 1.0
        if max(h, w) < SMALL_STILL:
            scale = SMALL_STILL / max(h, w)
            picture = cv2.resize(picture, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
            h, w = picture.shape[:2]
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        pad = side // 2
        image = cv2.copyMakeBorder(
            picture, top + pad, side - h - top + pad, left + pad, side - w - left + pad, cv2.BORDER_CONSTANT
        )
        return cls(image, scale, (left + pad, top + pad))

    def original_box(self, box: Box, width: int, height: int) -> Box | None:
        """``box`` (pixels of the padded image) in the picture's pixels, clipped to it."""
        x, y = self.offset
        s = self.scale
        return clip_box((box.x - x) / s, (box.y - y) / s, box.w / s, box.h / s, width, height)
