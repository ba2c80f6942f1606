"""Every message that travels on the emopipe bus, and its wire format.

Schema version: 2 (``SCHEMA_VERSION``; 2 added face tracks). A receiver rejects any other version.

Each message is one ZeroMQ multipart message of three parts::

    part 0  topic    ASCII  "<kind>.<camera>."   e.g. b"frame.cam0."
    part 1  header   msgpack map (see below)
    part 2  payload  raw array bytes, C order, sent without copying (may be empty)

except a "results" message that carries its frame's pixels (capture sends it so to a sink
that shows or records the camera): six parts, the results' three, then the frame's three
exactly as capture encoded them for detect (raw or JPEG)::

    parts 0-2  results  topic b"results.<camera>.", header, probabilities
    parts 3-5  frame    topic b"frame.<camera>.", header, image (same camera and seq)

so the sink gets one ordered stream per camera and never has to join two.

The topic starts with the kind and carries the camera id, and ends with a dot so
that a subscriber takes one camera with the prefix ``b"frame.cam0."`` (which is not
a prefix of ``b"frame.cam01."``) or every camera with ``b"frame."``.

Header keys present in every message:

    v       int    schema version (2)
    kind    str    "frame" | "faces" | "results" | "eos"
    camera  str    camera id, [A-Za-z0-9_-]{1,64}
    seq     int    frame sequence number within the camera, from 0
                   (for "eos": the number of frames the camera produced)
    ts      float  the frame's time, seconds: capture time (epoch) for cameras and live runs;
                   for files analysed frame by frame (lossless), media time from the file's
                   start (a folder's images: index / fps), so a run's lines do not depend on
                   the machine's speed; the schedule, tracker and smoothing run on it
    sent    float  when the previous stage sent this message, epoch seconds

Optional header keys (a message without them is read with the default):

    wall    float  when capture read the frame, epoch seconds (default: ts); end-to-end latency
    unread  int    "eos" only: frames of the source that could not be read (a damaged stretch
                   skipped, or a file that ended before its declared length); default 0
    shape   [int]  shape of the payload array
    dtype   str    "uint8" | "float32", dtype of the payload array

Kind-specific header keys and payloads:

    frame    payload: the image, shape [H, W, 3], uint8, BGR; or, with codec: "jpeg" and
             image: [H, W, 3], the image JPEG-compressed, shape [bytes], uint8
             (``bus.frames_jpeg_quality``: for links between hosts); or, with codec: "shm",
             image: [H, W, 3], segment: str, offset: int, no payload: the image is in capture's
             shared memory (``emopipe/shm.py``: to a detect worker on capture's host)
    faces    boxes: [[x, y, w, h], ...] in frame pixels, one per face;
             tracks: [int] the face's track id (stable while it stays in view), one per box;
             payload: the face crops, shape [N, S, S], uint8 grey (N = len(boxes), S = the model's input_size)
    results  boxes, tracks: as in "faces"; emotions: [str] one label per face;
             confidences: [float]; labels: [str] the model's labels in output order;
             payload: the probabilities, shape [N, len(labels)], float32
    eos      payload: empty, shape [0], uint8 — the camera produced its last frame

The header is checked against the payload (shape x dtype size == byte count,
box count == N) before any pixel is touched. msgpack only: nothing is pickled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import msgpack
import numpy as np

from emopipe import shm

SCHEMA_VERSION = 2
KINDS = ("frame", "faces", "results", "eos")
MAX_HEADER_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
MAX_DIMENSIONS = 3  # frames [H, W, 3], crops [N, S, S], probabilities [N, labels], end-of-stream [0]
BOX_LIMIT = 2**31  # box coordinates and sizes fit OpenCV's int
_DTYPES: dict[str, np.dtype[Any]] = {"uint8": np.dtype(np.uint8), "float32": np.dtype(np.float32)}
CAMERA_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # whole string: use fullmatch


class MessageError(ValueError):
    """A message that cannot be decoded; ``reason`` is the drop-counter reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


@dataclass(frozen=True)
class Frame:
    camera: str
    seq: int
    ts: float
    image: np.ndarray  # [H, W, 3] uint8 BGR
    sent: float = 0.0
    wall: float = 0.0  # when capture read it (epoch); 0: the same as ts


@dataclass(frozen=True)
class Faces:
    camera: str
    seq: int
    ts: float
    boxes: tuple[Box, ...]
    crops: np.ndarray  # [N, S, S] uint8, S = the emotion model's input_size
    tracks: tuple[int, ...] = ()  # one per box; () only for messages built without tracking
    sent: float = 0.0
    wall: float = 0.0


@dataclass(frozen=True)
class FaceResult:
    box: Box
    emotion: str
    confidence: float
    probabilities: tuple[float, ...]
    track: int = 0


@dataclass(frozen=True)
class Results:
    camera: str
    seq: int
    ts: float
    faces: tuple[FaceResult, ...]
    labels: tuple[str, ...]
    sent: float = 0.0
    wall: float = 0.0
    # the frame's pixels, when the sink asked for them (six parts on the wire); not compared
    # or printed: an image has no single truth value and is no use in a log line
    frame: Frame | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class EndOfStream:
    camera: str
    seq: int  # number of frames the camera produced
    ts: float
    sent: float = 0.0
    unread: int = 0  # frames of the source that could not be read (damaged, or the file ended early)


Message = Frame | Faces | Results | EndOfStream
_KIND_OF = {Frame: "frame", Faces: "faces", Results: "results", EndOfStream: "eos"}
#: the message type of each kind
TYPES: dict[str, type] = {kind: cls for cls, kind in _KIND_OF.items()}


def kind_of(msg: Message) -> str:
    return _KIND_OF[type(msg)]


def topic(kind: str, camera: str | None = None) -> bytes:
    """Topic of a message, or with ``camera=None`` the prefix for every camera."""
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind!r}")
    if camera is None:
        return f"{kind}.".encode()
    check_camera_id(camera)
    return f"{kind}.{camera}.".encode()


def check_camera_id(camera: str) -> None:
    if not CAMERA_ID.fullmatch(camera):
        raise ValueError(f"camera id {camera!r} must match {CAMERA_ID.pattern}")


# ---------------------------------------------------------------- encoding


def encode(msg: Message, sent: float, jpeg_quality: int = 0, shared: tuple[str, int] | None = None) -> list[Any]:
    """Return ``[topic, header, payload]``; the payload is the array's own buffer (a frame,
    with ``jpeg_quality`` 1..100: its JPEG bytes; with ``shared``, the segment and offset of its
    copy in shared memory, ``emopipe/shm.py``: no payload). Results with a frame: the six parts of
    ``with_frame``, the frame encoded with ``jpeg_quality``."""
    if isinstance(msg, Results) and msg.frame is not None:
        return with_frame(encode(replace(msg, frame=None), sent), encode(msg.frame, sent, jpeg_quality))
    kind = kind_of(msg)
    header: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "kind": kind,
        "camera": msg.camera,
        "seq": msg.seq,
        "ts": msg.ts,
        "sent": sent,
    }
    if isinstance(msg, EndOfStream):
        header["unread"] = msg.unread
    else:
        header["wall"] = msg.wall or msg.ts
    payload = _payload_and_fields(msg, header)
    if shared is not None and isinstance(msg, Frame):
        header["codec"] = "shm"
        header["segment"], header["offset"] = shared
        header["image"] = list(msg.image.shape)
        payload = np.zeros((0,), np.uint8)
    elif jpeg_quality and isinstance(msg, Frame):
        ok, jpeg = cv2.imencode(".jpg", msg.image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise ValueError(f"camera {msg.camera} frame {msg.seq}: OpenCV could not JPEG-encode it")
        header["codec"] = "jpeg"
        header["image"] = list(msg.image.shape)
        payload = jpeg.reshape(-1)
    payload = np.ascontiguousarray(payload)
    header["shape"] = list(payload.shape)
    header["dtype"] = str(payload.dtype)
    raw = memoryview(payload).cast("B") if payload.size else b""  # type: ignore[arg-type]  # zero-size views cannot be cast
    return [topic(kind, msg.camera), msgpack.packb(header), raw]


def _payload_and_fields(msg: Message, header: dict[str, Any]) -> np.ndarray:
    if isinstance(msg, Frame):
        return msg.image
    if isinstance(msg, Faces):
        header["boxes"] = [b.as_list() for b in msg.boxes]
        header["tracks"] = list(msg.tracks) if msg.tracks else [0] * len(msg.boxes)
        return msg.crops
    if isinstance(msg, Results):
        header["boxes"] = [f.box.as_list() for f in msg.faces]
        header["tracks"] = [f.track for f in msg.faces]
        header["emotions"] = [f.emotion for f in msg.faces]
        header["confidences"] = [f.confidence for f in msg.faces]
        header["labels"] = list(msg.labels)
        probs = np.array([f.probabilities for f in msg.faces], dtype=np.float32)
        return probs.reshape(len(msg.faces), len(msg.labels))
    return np.zeros((0,), dtype=np.uint8)


def with_tracks(parts: Sequence[Any], tracks: Sequence[int]) -> list[Any]:
    """An encoded, already decoded (valid) Faces message with other track ids: only its header
    is packed again; the crops stay the buffer they are."""
    header = msgpack.unpackb(bytes(_buffer(parts[1])), raw=False)
    header["tracks"] = list(tracks)
    return [parts[0], msgpack.packb(header), parts[2]]


def with_frame(results: Sequence[Any], frame: Sequence[Any]) -> list[Any]:
    """Encoded results followed by their encoded frame (as capture sent it to detect: the
    image buffer is not copied, a JPEG is not encoded again): one six-part message."""
    return [*results, *frame]


# ---------------------------------------------------------------- decoding


def decode(parts: Sequence[Any]) -> Message:
    """Decode ``[topic, header, payload]`` (bytes or zmq.Frame parts), or six parts: results
    and their frame.

    Raises MessageError with reason "malformed", "oversized" or "version".
    """
    if len(parts) == 6:
        return _decode_results_with_frame(parts)
    if len(parts) != 3:
        raise MessageError("malformed", f"expected 3 parts (6 for results with their frame), got {len(parts)}")
    topic_bytes, header_bytes, payload = (_buffer(p) for p in parts)
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise MessageError("oversized", f"header of {len(header_bytes)} bytes")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError("oversized", f"payload of {len(payload)} bytes")
    header = _unpack_header(bytes(header_bytes))
    kind = _field(header, "kind", str)
    if kind not in KINDS:
        raise MessageError("malformed", f"unknown kind {kind!r}")
    camera = _field(header, "camera", str)
    if not CAMERA_ID.fullmatch(camera):
        raise MessageError("malformed", f"bad camera id {camera!r}")
    if bytes(topic_bytes) != topic(kind, camera):
        raise MessageError("malformed", f"topic {bytes(topic_bytes)!r} does not match {kind}/{camera}")
    array = _payload_array(header, payload)
    common = {
        "camera": camera,
        "seq": _count(header, "seq"),
        "ts": _number(header, "ts"),
        "sent": _number(header, "sent"),
    }
    if kind == "eos":
        return EndOfStream(**common, unread=_count(header, "unread") if "unread" in header else 0)
    common["wall"] = _number(header, "wall") if "wall" in header else common["ts"]
    if kind == "frame":
        return _decode_frame(common, header, array)
    if kind == "faces":
        return _decode_faces(common, header, array)
    return _decode_results(common, header, array)


def _decode_results_with_frame(parts: Sequence[Any]) -> Results:
    results = decode(parts[:3])
    if not isinstance(results, Results):
        raise MessageError("malformed", f"a 6-part message must be results and a frame, not {kind_of(results)}")
    frame = decode(parts[3:])
    if not isinstance(frame, Frame):
        raise MessageError("malformed", f"results followed by {kind_of(frame)}, not by their frame")
    if (frame.camera, frame.seq) != (results.camera, results.seq):
        raise MessageError(
            "malformed",
            f"results of camera {results.camera} frame {results.seq} carry frame {frame.seq} of camera {frame.camera}",
        )
    return replace(results, frame=frame)


def _buffer(part: Any) -> memoryview:
    if hasattr(part, "buffer"):  # zmq.Frame received with copy=False
        return memoryview(part.buffer)
    return memoryview(part)


def _unpack_header(raw: bytes) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise MessageError("malformed", f"header is not msgpack: {exc}") from exc
    if not isinstance(header, dict):
        raise MessageError("malformed", f"header is a {type(header).__name__}, not a map")
    version = header.get("v")
    if version != SCHEMA_VERSION:
        raise MessageError("version", f"schema version {version!r}, expected {SCHEMA_VERSION}")
    return header


def _field(header: dict[str, Any], key: str, kind: type) -> Any:
    value = header.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MessageError("malformed", f"header field {key!r} is {value!r}, expected {kind.__name__}")
    return value


def _count(header: dict[str, Any], key: str) -> int:
    value = _field(header, key, int)
    if not 0 <= value < 2**63:
        raise MessageError("malformed", f"header field {key!r} is {value!r}, expected 0 <= n < 2**63")
    return int(value)


def _number(header: dict[str, Any], key: str) -> float:
    """A time in epoch seconds: finite and not negative."""
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise MessageError("malformed", f"header field {key!r} is {value!r}, expected a time (seconds >= 0)")
    return float(value)


def _payload_array(header: dict[str, Any], payload: memoryview) -> np.ndarray:
    shape = header.get("shape")
    dtype_name = header.get("dtype")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMENSIONS
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_PAYLOAD_BYTES for d in shape)
    ):
        raise MessageError("malformed", f"bad shape {shape!r}")
    if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
        raise MessageError("malformed", f"unsupported dtype {dtype_name!r}")
    dtype = _DTYPES[dtype_name]
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(payload):
        raise MessageError(
            "malformed", f"shape {shape} {dtype_name} needs {expected} bytes, payload has {len(payload)}"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


def _boxes(header: dict[str, Any], count: int) -> tuple[Box, ...]:
    raw = header.get("boxes")
    if not isinstance(raw, list) or len(raw) != count:
        raise MessageError("malformed", f"boxes {raw!r} do not match {count} payload rows")
    boxes = []
    for item in raw:
        if not (
            isinstance(item, list)
            and len(item) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) and -BOX_LIMIT < v < BOX_LIMIT for v in item)
            and item[2] >= 0
            and item[3] >= 0
        ):
            raise MessageError("malformed", f"bad box {item!r}")
        boxes.append(Box(*item))
    return tuple(boxes)


def _tracks(header: dict[str, Any], count: int) -> tuple[int, ...]:
    raw = header.get("tracks")
    if (
        not isinstance(raw, list)
        or len(raw) != count
        or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**63 for t in raw)
    ):
        raise MessageError("malformed", f"tracks {raw!r} do not match {count} boxes")
    return tuple(raw)


def _decode_frame(common: dict[str, Any], header: dict[str, Any], array: np.ndarray) -> Frame:
    codec = header.get("codec", "raw")
    if codec == "jpeg":
        array = _decode_jpeg(header, array)
    elif codec == "shm":
        array = _map_shared(header, array)
    elif codec != "raw":
        raise MessageError("malformed", f"unknown frame codec {codec!r}")
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise MessageError("malformed", f"frame image must be [H, W, 3] uint8, got {list(array.shape)} {array.dtype}")
    return Frame(image=array, **common)


def _image_shape(header: dict[str, Any]) -> tuple[int, int, int]:
    """A JPEG's or shared frame's [H, W, 3] (header ``image``), before its pixels are touched."""
    shape = header.get("image")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or shape[2] != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        or math.prod(shape) > MAX_PAYLOAD_BYTES
    ):
        raise MessageError("malformed", f"bad frame shape {shape!r}")
    return shape[0], shape[1], shape[2]


def _map_shared(header: dict[str, Any], payload: np.ndarray) -> np.ndarray:
    """The frame in capture's shared memory (read-only), where the header says it is."""
    if payload.size:
        raise MessageError("malformed", "a shared-memory frame carries no payload")
    try:
        return shm.frame_view(_field(header, "segment", str), _count(header, "offset"), _image_shape(header))
    except shm.MappingError as exc:
        raise MessageError("malformed", str(exc)) from exc


def _decode_jpeg(header: dict[str, Any], data: np.ndarray) -> np.ndarray:
    """The image of a JPEG frame, checked against the header's ``image`` shape before and after
    decoding (so a JPEG that claims a huge image is refused before its pixels are allocated)."""
    shape = list(_image_shape(header))
    if data.ndim != 1 or jpeg_size(data) != (shape[1], shape[0]):
        raise MessageError("malformed", f"the JPEG is not a {shape[1]}x{shape[0]} image")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None or list(image.shape) != shape:
        raise MessageError("malformed", f"the JPEG does not decode to a {shape[1]}x{shape[0]} image")
    return image


#: JPEG start-of-frame markers (the ones that carry the image size): SOF0..SOF15 but DHT, JPG, DAC
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment, without decoding; None if none is found."""
    raw = data.tobytes()
    if raw[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 9 <= len(raw):
        if raw[at] != 0xFF:
            return None
        marker, length = raw[at + 1], int.from_bytes(raw[at + 2 : at + 4], "big")
        if marker in _SOF:
            return int.from_bytes(raw[at + 7 : at + 9], "big"), int.from_bytes(raw[at + 5 : at + 7], "big")
        at += 2 + length
    return None


def _decode_faces(common: dict[str, Any], header: dict[str, Any], array: np.ndarray) -> Faces:
    if array.ndim != 3 or array.dtype != np.uint8:
        raise MessageError("malformed", f"face crops must be [N, S, S] uint8, got {list(array.shape)} {array.dtype}")
    count = array.shape[0]
    return Faces(boxes=_boxes(header, count), crops=array, tracks=_tracks(header, count), **common)


def _decode_results(common: dict[str, Any], header: dict[str, Any], array: np.ndarray) -> Results:
    labels = header.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise MessageError("malformed", f"bad labels {labels!r}")
    if array.ndim != 2 or array.shape[1] != len(labels) or array.dtype != np.float32:
        raise MessageError("malformed", f"probabilities must be [N, {len(labels)}] float32, got {list(array.shape)}")
    count = array.shape[0]
    boxes = _boxes(header, count)
    tracks = _tracks(header, count)
    emotions = header.get("emotions")
    confidences = header.get("confidences")
    if not isinstance(emotions, list) or len(emotions) != count or not all(e in labels for e in emotions):
        raise MessageError("malformed", f"emotions {emotions!r} do not match labels/face count")
    if (
        not isinstance(confidences, list)
        or len(confidences) != count
        or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c <= 1 for c in confidences)
    ):
        raise MessageError("malformed", f"confidences {confidences!r} do not match face count (each in [0, 1])")
    if not np.isfinite(array).all():
        raise MessageError("malformed", "probabilities hold NaN or infinity")
    faces = tuple(
        FaceResult(
            box=box, emotion=emotion, confidence=float(conf), probabilities=tuple(float(p) for p in row), track=track
        )
        for box, track, emotion, conf, row in zip(boxes, tracks, emotions, confidences, array, strict=False)
    )
    return Results(faces=faces, labels=tuple(labels), **common)
