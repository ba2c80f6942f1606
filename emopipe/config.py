"""The one configuration schema of the pipeline: typed sections, defaults in one place.

A TOML file overrides any subset of the defaults below, and environment variables
``EMOPIPE__<SECTION>__<KEY>`` override the file (each stage logs the ones it applied). An unknown key is an error
that names it with its full dotted path (``detect.scale_factr``); a value of the
wrong type is an error naming the key, the expected type and the value. Every stage
and the launcher read the same file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from emopipe import topology
from emopipe.messages import CAMERA_ID, MAX_PAYLOAD_BYTES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = PACKAGE_ROOT / "services" / "classify" / "models" / "emotion.onnx"
WEBCAM = re.compile(r"^\d+$")
ENV_PREFIX = "EMOPIPE__"
LIVE_URL = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp)://", re.IGNORECASE)


#: Keys of earlier versions, with what replaced them.
REMOVED = {
    "detect.face_size": "detect crops faces at the model's input_size, read from classify.model's metadata",
    "sink.match_timeout_s": "the sink no longer joins frames and results: each results message carries its frame",
}


MODES = ("auto", "live", "lossless")
DETECTORS = ("haar", "yunet")  # detect.detector
FINDERS = ("yunet", "cascade")  # detect.finder
#: the stages that run as pools of workers: ``<stage>.workers``, ``--workers STAGE=N``
POOLS = topology.names(topology.pools())


class ConfigError(ValueError):
    """A configuration file or value that is not valid; the message names the key."""


@dataclass(frozen=True)
class SourceConfig:
    id: str = "cam0"
    uri: str = ""  # webcam index ("0"), video file, rtsp/http URL or folder of images
    loop: bool = False  # replay a file or folder forever (never ends)
    fps: float = 0.0  # playback rate; 0 = the file's own rate (folders: 5)

    @property
    def is_live(self) -> bool:
        """Webcams and network streams run at their own pace and never end."""
        return bool(WEBCAM.match(self.uri) or LIVE_URL.match(self.uri))


@dataclass(frozen=True)
class PipelineConfig:
    # "lossless": every frame analysed (back-pressure); "live": the newest frame wins; "auto": lossless
    # unless a source is live or realtime is set (a worker on another host knows no sources: set it)
    mode: str = "auto"
    realtime: bool = False  # files behave like cameras: drop stale frames, never slow down
    log_level: str = "INFO"
    metrics_host: str = "127.0.0.1"  # address every stage serves /metrics on ("0.0.0.0": all)
    restart_backoff_s: float = 1.0  # launcher: first restart delay of a crashed stage
    restart_backoff_max_s: float = 30.0
    max_restarts: int = 10  # launcher: a stage restarted more often is a failure
    stop_timeout_s: float = 5.0  # launcher: SIGTERM -> wait -> SIGKILL


@dataclass(frozen=True)
class EndpointsConfig:
    # Several addresses separated by commas: a publisher binds each, a subscriber connects
    # to each (fan-in from a stage scaled out over several processes or hosts).
    # {runtime}: a directory only this user may open (emopipe.bus.runtime_dir); tcp:// between hosts.
    # One key per link of emopipe/topology.py, which holds the defaults. Capture binds all three
    # (services/capture/hub.py); the workers and the sink connect.
    frames: str = topology.link("frames").endpoint  # detect workers take frames here
    faces: str = topology.link("faces").endpoint  # classify workers take faces here
    # the sink takes each camera's results here, in frame order, with their frames' pixels while it draws them
    results: str = topology.link("results").endpoint


@dataclass(frozen=True)
class BusConfig:
    # the results link's queues (capture to the sink; capture's is 64 at least), live and lossless;
    # the pools' windows are the work-pool protocol's (emopipe/workpool/protocol.py)
    live_hwm: int = 2
    lossless_hwm: int = 8
    subscribe_timeout_s: float = 120.0  # lossless: wait this long for the next stage
    eos_repeat_s: float = 1.0  # capture repeats end-of-stream this often (live, a full queue may drop it)
    max_message_mb: int = 64  # a received message part over this is refused before decoding (the peer is cut off)
    frames_jpeg_quality: int = 0  # 1..100: frames travel JPEG-compressed at this quality (links between hosts); 0: raw
    shared_memory: bool = True  # frames to a detect worker on capture's host go in shared memory (emopipe/shm.py)


@dataclass(frozen=True)
class CurveConfig:
    # a directory made by `emopipe keys DIR`: every link encrypted, and only peers whose public key
    # is a *.key file there get in (emopipe/curve.py); "" = plain links (one host: ipc:// in a 0700 dir)
    keys: str = ""


@dataclass(frozen=True)
class CaptureConfig:
    metrics_port: int = topology.stage("capture").metrics_port  # 0 = no /metrics
    subscribers: int = 1  # lossless: sinks (subscribers of the cameras' end-of-stream) awaited before the first frame
    # play files at their frame rate: "auto" in live runs (--realtime) only, so that a lossless
    # analysis goes as fast as the pipeline does; "on": always; "off": never
    pace: str = "auto"
    folder_fps: float = 5.0
    reconnect_backoff_s: float = 1.0
    reconnect_backoff_max_s: float = 30.0
    stall_timeout_s: float = 5.0  # a network stream that delivers no frame this long (or won't open) is reopened
    rtsp_transport: str = "tcp"  # RTSP over "tcp" (what NVRs and firewalls expect) or "udp"
    # FFmpeg's decoding threads per video file or stream (0: FFmpeg's own choice, one per core);
    # each source already has a thread of its own, and one decoding thread costs 10-30% less CPU a frame
    decode_threads: int = 1


@dataclass(frozen=True)
class DetectConfig:
    metrics_port: int = topology.stage("detect").metrics_port  # a second worker on this host: + 10, and so on
    workers: int = 1  # `emopipe run` starts this many (more may join by hand, on any host)
    cameras: list[str] = field(default_factory=list)  # empty = every camera
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size: int = 40  # pixels of the full frame
    downscale: float = 1.0  # every_frame only: detect on the frame shrunk by this factor
    # scheduled cascade and YuNet: a frame whose longer side is over this is searched on a copy shrunk
    # to it (min_size, boxes and crops stay in full-frame pixels, but faces under 24 px of the copy are
    # not found: 48 px at 1280x720); 0: the whole frame (services/detect/shrink.py; BENCHMARKS.md)
    max_side: int = 640
    threads: int = 3  # cameras detected in parallel, one OpenCV thread each (measured on 2 cores: BENCHMARKS.md)
    # "haar": OpenCV's frontal-face cascade (the paper's) with the keys below; "yunet": OpenCV's CNN
    # face detector on a shrunk copy of every frame, tracked (services/detect/yunet.py; BENCHMARKS.md)
    detector: str = "haar"
    yunet_score: float = 0.7  # "yunet": a face needs at least this score
    # Scheduled detection (services/detect/schedule.py); defaults measured in BENCHMARKS.md
    every_frame: bool = False  # the paper's way: the full-frame cascade on every frame
    # how the cascade's schedule finds new faces: "yunet", YuNet on a shrunk copy every
    # finder_interval_s says where they are and the cascade confirms each (services/detect/finder.py);
    # "cascade", the cascade's own rolling scan (the scan_* and idle/motion keys below)
    finder: str = "yunet"
    finder_interval_s: float = 0.2  # "yunet": it looks at the whole frame this often (4-5 ms at 640x480)
    finder_score: float = 0.6  # "yunet": a face it proposes needs this score (the cascade confirms it)
    scan_interval_s: float = 0.5  # "cascade": the whole frame is scanned once this often
    large_scan_interval_s: float = 0.3  # faces over 2 x min_size (a cheap scan of shrunk frames): this often
    scan_scale_factor: float = 1.2  # the scan's cascade step between face sizes (tracks use scale_factor)
    scan_tile: int = 240  # tile side (pixels of the shrunk frame) of the rolling scan's jobs
    scan_max_jobs: int = 1  # scan jobs per frame at most (bounds the cost of a frame)
    idle_rescan_s: float = 2.0  # a tile without motion is still rescanned this often
    # a frame where over this fraction of the (1/8 size) picture changed is a shot cut: every
    # track ends and the whole frame is scanned at once (1: never)
    cut_fraction: float = 0.5
    motion_fraction: float = 0.01  # a tile with less than this fraction of changed pixels is not rescanned
    track_margin: float = 0.35  # re-detect a track within its box grown by this fraction of its size per side
    track_redetect_s: float = 0.06  # re-detect a track this often (found at its last try: 1.5x); it coasts between
    max_tracks: int = 16  # tracks re-detected per frame at most (the rest coast)
    track_min_iou: float = 0.2  # overlap a detection needs with a track's prediction to continue it
    track_hold_s: float = 0.3  # a track missed by the detector keeps its predicted box this long
    track_timeout_s: float = 2.0  # a track unseen this long has ended (until then it is looked for)


@dataclass(frozen=True)
class ClassifyConfig:
    metrics_port: int = topology.stage("classify").metrics_port  # a second worker on this host: + 10, ...
    workers: int = 1
    cameras: list[str] = field(default_factory=list)
    model: str = str(DEFAULT_MODEL)
    intra_op_threads: int = 1


@dataclass(frozen=True)
class SinkConfig:
    metrics_port: int = topology.stage("sink").metrics_port
    cameras: list[str] = field(default_factory=list)
    events: str = ""  # JSON lines file; "" = none
    record: str = ""  # annotated video file; "" = none (several cameras: name.<camera>.ext)
    record_fps: float = 25.0  # --record of a live camera plays at this rate (a file or folder at its own)
    show: bool = False  # OpenCV window per camera
    tracks: str = ""  # JSON lines file, one line per ended face track; "" = none
    smooth_s: float = 1.0  # time constant of each track's exponential average of probabilities
    jpeg_quality: int = 80
    progress_s: float = 10.0  # runs on files, not on a terminal: log each camera's progress this often (0: never)


@dataclass(frozen=True)
class ViewerConfig:
    host: str = "127.0.0.1"
    port: int = 8080  # 0 = no web viewer
    max_clients: int = 64  # connections served at once (streams included); more are answered 503


@dataclass(frozen=True)
class Config:
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    sources: list[SourceConfig] = field(default_factory=list)
    endpoints: EndpointsConfig = field(default_factory=EndpointsConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    curve: CurveConfig = field(default_factory=CurveConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    viewer: ViewerConfig = field(default_factory=ViewerConfig)

    @property
    def cameras(self) -> list[str]:
        return [s.id for s in self.sources]

    @property
    def lossless(self) -> bool:
        """Analyse every frame (back-pressure): ``pipeline.mode``; with "auto", unless a source
        is live or --realtime."""
        if self.pipeline.mode != "auto":
            return self.pipeline.mode == "lossless"
        return not self.pipeline.realtime and not any(s.is_live for s in self.sources)

    @property
    def all_sources_end(self) -> bool:
        return bool(self.sources) and not any(s.is_live or s.loop for s in self.sources)


# ---------------------------------------------------------------- loading


def load(path: str | Path | Sequence[str | Path] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML file, or several in order (a later one's keys win, section by
    section; ``None``: the defaults), then environment overrides."""
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    data: dict[str, Any] = {}
    for each in map(Path, paths):
        for section, values in _read(each).items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section].update(values)
            else:
                data[section] = values
    for key, value in env_overrides(os.environ if environ is None else environ).items():
        section, name = key.split(".")
        _check_override(section, name)
        data.setdefault(section, {})[name] = value
    try:
        expand_source_variables(data, os.environ if environ is None else environ)
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{', '.join(map(str, paths)) or 'defaults'}: {exc}") from exc


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_source_variables(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """``${NAME}`` in a source's ``uri`` replaced by the environment variable ``NAME``, so that a
    config can be committed without the camera's password (``rtsp://viewer:${DOOR_PASSWORD}@…``).
    An unset variable is an error naming the variable, never its value."""
    sources = data.get("sources")
    if not isinstance(sources, list):
        return
    for i, src in enumerate(sources):
        uri = src.get("uri") if isinstance(src, dict) else None
        if not isinstance(uri, str) or "${" not in uri:
            continue
        missing = [name for name in _VARIABLE.findall(uri) if name not in environ]
        if missing:
            raise ConfigError(f"'sources[{i}].uri' uses ${{{missing[0]}}}, which is not set in the environment")
        src["uri"] = _VARIABLE.sub(lambda m: environ[m.group(1)], uri)


def _check_override(section: str, name: str) -> None:
    """An environment override of a key the config does not have, named as the variable it came from."""
    var = f"{ENV_PREFIX}{section.upper()}__{name.upper()}"
    hint = get_type_hints(Config).get(section)  # None for a section the config does not have
    if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
        raise ConfigError(f"environment variable {var}: unknown section '{section}'")
    if name not in {f.name for f in fields(hint)}:
        raise ConfigError(f"environment variable {var}: unknown key '{section}.{name}'")


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"config file {path} is a folder, not a TOML file") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from exc


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``EMOPIPE__<SECTION>__<KEY>=<TOML value>`` variables, as ``{"section.key": value}``.

    A value that is not a TOML literal is taken as a string (``EMOPIPE__SINK__EVENTS=out.jsonl``).
    """
    found: dict[str, Any] = {}
    for var, raw in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"environment variable {var}: expected {ENV_PREFIX}<SECTION>__<KEY>")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        found[".".join(parts)] = value
    return found


def from_dict(data: dict[str, Any]) -> Config:
    return validate(_build(Config, data, ""))


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a table, got {data!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in data:
        if f"{prefix}{key}" in REMOVED:
            raise ConfigError(f"key '{prefix}{key}' was removed: {REMOVED[prefix + key]}")
        if key not in known:
            raise ConfigError(f"unknown key '{prefix}{key}'")
    values = {key: _convert(hints[key], value, f"{prefix}{key}") for key, value in data.items()}
    return cls(**values)


#: keys that were true/false and now take words: an old config's true means "on", false "off"
WAS_BOOL = {"capture.pace"}


def _convert(hint: Any, value: Any, key: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if get_origin(hint) is list:
        (item,) = get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if key in WAS_BOOL and isinstance(value, bool):  # the key's old form: true/false
        return "on" if value else "off"
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"'{key}' must be {hint.__name__}, got {value!r}")
    return value


def validate(cfg: Config) -> Config:
    ids = [s.id for s in cfg.sources]
    for i, src in enumerate(cfg.sources):
        if not CAMERA_ID.fullmatch(src.id):
            raise ConfigError(f"'sources[{i}].id' {src.id!r} must match {CAMERA_ID.pattern}")
        if not src.uri:
            raise ConfigError(f"'sources[{i}].uri' is empty")
        if any(ord(ch) < 32 for ch in src.uri):
            raise ConfigError(f"'sources[{i}].uri' {src.uri!r} holds a control character (a newline?)")
        if src.fps < 0:
            raise ConfigError(f"'sources[{i}].fps' must be >= 0, got {src.fps}")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"duplicate source ids in {ids}")
    if ids:  # a stage's config on another host may list no sources: then any camera id goes
        for section in ("detect", "classify", "sink"):
            unknown = [c for c in getattr(cfg, section).cameras if c not in ids]
            if unknown:
                raise ConfigError(f"'{section}.cameras' names {unknown}, which no source has (sources: {ids})")
    _check_positive(cfg)
    return cfg


def _check_positive(cfg: Config) -> None:
    checks = {
        "detect.scale_factor": cfg.detect.scale_factor > 1.0,
        "detect.min_neighbors": cfg.detect.min_neighbors >= 0,
        "detect.min_size": cfg.detect.min_size >= 1,
        "detect.downscale": cfg.detect.downscale >= 1.0,
        "detect.max_side": cfg.detect.max_side == 0 or cfg.detect.max_side >= 48,  # two 24 px cascade windows
        "detect.threads": cfg.detect.threads >= 1,
        **{f"{pool}.workers": 1 <= getattr(cfg, pool).workers <= 10 for pool in POOLS},
        "detect.detector": cfg.detect.detector in DETECTORS,
        "detect.yunet_score": 0 < cfg.detect.yunet_score < 1,
        "detect.finder": cfg.detect.finder in FINDERS,
        "detect.finder_interval_s": cfg.detect.finder_interval_s > 0,
        "detect.finder_score": 0 < cfg.detect.finder_score < 1,
        "pipeline.mode": cfg.pipeline.mode in MODES,
        "capture.rtsp_transport": cfg.capture.rtsp_transport in ("tcp", "udp"),
        "capture.pace": cfg.capture.pace in ("auto", "on", "off"),
        "detect.scan_interval_s": cfg.detect.scan_interval_s > 0,
        "detect.large_scan_interval_s": cfg.detect.large_scan_interval_s > 0,
        "detect.scan_scale_factor": cfg.detect.scan_scale_factor > 1.0,
        "detect.scan_tile": cfg.detect.scan_tile >= 2 * cfg.detect.min_size + 1,
        "detect.scan_max_jobs": cfg.detect.scan_max_jobs >= 1,
        "detect.idle_rescan_s": cfg.detect.idle_rescan_s >= 0,
        "detect.motion_fraction": 0 <= cfg.detect.motion_fraction < 1,
        "detect.cut_fraction": 0 < cfg.detect.cut_fraction <= 1,
        "detect.track_margin": cfg.detect.track_margin >= 0,
        "detect.track_redetect_s": 0 <= cfg.detect.track_redetect_s <= cfg.detect.track_hold_s,
        "detect.max_tracks": cfg.detect.max_tracks >= 0,
        "detect.track_min_iou": 0 < cfg.detect.track_min_iou <= 1,
        "detect.track_hold_s": cfg.detect.track_hold_s >= 0,
        "detect.track_timeout_s": cfg.detect.track_timeout_s >= cfg.detect.track_hold_s,
        "sink.smooth_s": cfg.sink.smooth_s >= 0,
        "capture.stall_timeout_s": cfg.capture.stall_timeout_s > 0,
        "capture.decode_threads": cfg.capture.decode_threads >= 0,
        "sink.progress_s": cfg.sink.progress_s >= 0,
        "classify.intra_op_threads": cfg.classify.intra_op_threads >= 0,
        "bus.live_hwm": cfg.bus.live_hwm >= 1,
        "bus.lossless_hwm": cfg.bus.lossless_hwm >= 1,
        "bus.max_message_mb": 1 <= cfg.bus.max_message_mb <= MAX_PAYLOAD_BYTES >> 20,
        "bus.frames_jpeg_quality": 0 <= cfg.bus.frames_jpeg_quality <= 100,
        "sink.jpeg_quality": 1 <= cfg.sink.jpeg_quality <= 100,
        "pipeline.log_level": cfg.pipeline.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        # times that are waited or divided by: above zero; rates: above zero
        "pipeline.restart_backoff_s": cfg.pipeline.restart_backoff_s > 0,
        "pipeline.restart_backoff_max_s": cfg.pipeline.restart_backoff_max_s >= cfg.pipeline.restart_backoff_s,
        "pipeline.max_restarts": cfg.pipeline.max_restarts >= 0,
        "pipeline.stop_timeout_s": cfg.pipeline.stop_timeout_s > 0,
        "bus.subscribe_timeout_s": cfg.bus.subscribe_timeout_s > 0,
        "bus.eos_repeat_s": cfg.bus.eos_repeat_s > 0,
        "capture.subscribers": cfg.capture.subscribers >= 0,
        "capture.folder_fps": cfg.capture.folder_fps > 0,
        "capture.reconnect_backoff_s": cfg.capture.reconnect_backoff_s > 0,
        "capture.reconnect_backoff_max_s": cfg.capture.reconnect_backoff_max_s >= cfg.capture.reconnect_backoff_s,
        "sink.record_fps": cfg.sink.record_fps > 0,
        "viewer.max_clients": 1 <= cfg.viewer.max_clients <= 10_000,
    }
    for section in (*topology.names(), "viewer"):
        port = getattr(getattr(cfg, section), "metrics_port" if section != "viewer" else "port")
        checks[f"{section}.{'port' if section == 'viewer' else 'metrics_port'}"] = 0 <= port <= 65535
    for key, ok in checks.items():
        if not ok:
            section, name = key.split(".")
            raise ConfigError(f"'{key}' has an invalid value {getattr(getattr(cfg, section), name)!r}")


#: ``--workers STAGE=N`` (emopipe run, emopipe bench): the stages that run as pools of workers
WORKERS_OPTION = re.compile(f"^({'|'.join(POOLS)})=([1-9]|10)$")  # 10: the metrics ports of a host (WORKER_PORTS)


def parse_workers(values: Sequence[str]) -> dict[str, int]:
    """``["detect=2", ...]`` as ``{"detect": 2}``; a bad one is a ConfigError naming it."""
    found = {}
    for value in values:
        match = WORKERS_OPTION.match(value)
        if match is None:
            raise ConfigError(f"--workers {value}: expected {' or '.join(p + '=N' for p in POOLS)}, N from 1 to 10")
        found[match.group(1)] = int(match.group(2))
    return found


def replace(cfg: Config, section: str, **changes: Any) -> Config:
    """A copy of ``cfg`` with some fields of one section changed."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})


# ---------------------------------------------------------------- writing


def to_toml(cfg: Config) -> str:
    """Serialise a config (the launcher hands its resolved config to every stage)."""
    lines: list[str] = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, list):
            for item in value:
                lines.append(f"[[{f.name}]]")
                lines.extend(_toml_fields(item))
                lines.append("")
        else:
            lines.append(f"[{f.name}]")
            lines.extend(_toml_fields(value))
            lines.append("")
    return "\n".join(lines)


def _toml_fields(section: Any) -> list[str]:
    return [f"{f.name} = {_toml_value(getattr(section, f.name))}" for f in fields(section)]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} as TOML")


def resolve_path(value: str) -> Path:
    """Expand ``~`` and environment variables in a configured path."""
    return Path(os.path.expandvars(os.path.expanduser(value)))
