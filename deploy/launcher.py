"""``emopipe``: start the whole pipeline from one config, supervise it, stop it cleanly.

    emopipe run [--source [ID=]SRC ...] [--events FILE] [--tracks FILE] [--config FILE]
                [--realtime] [--loop] [--show] [--record FILE] [--workers detect|classify=N ...]
                [--prometheus [--prometheus-listen HOST:PORT]]
    emopipe check-config FILE
    emopipe keys DIR
    emopipe bench [--cameras N] [--source VIDEO] [--size WxH] [--seconds S] [--markdown FILE] [--smoke]
    emopipe recall [VIDEO ...] [--frames N] [--size WxH|native] [--config FILE] [--pipeline] [--markdown FILE]
                   [--json FILE]
    emopipe report EVENTS [--tracks TRACKS] --out FILE.html

``run`` resolves the config (file + command-line options), writes it to a temporary
TOML file and starts every stage as its own process (``python -m services.<stage>
--config that-file``, the same code as the ``emopipe-<stage>`` console scripts). A
stage that dies is restarted with exponential backoff; detect and classify run as
pools of ``<stage>.workers`` processes (``--workers``), and more may join by hand; SIGINT/SIGTERM stop the stages
upstream first. When every source is a file, the sink exits after the last result
and the launcher exits with the sink's status (0: every frame has its line).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy import bench as bench_mod
from deploy import evaluate as evaluate_mod
from deploy import recall as recall_mod
from deploy import report as report_mod
from deploy.prometheus import server as prometheus_server
from emopipe import config as config_mod
from emopipe import curve, sample_video, topology
from emopipe import metrics as metrics_mod
from emopipe.config import Config, ConfigError, SourceConfig, resolve_path
from emopipe.messages import CAMERA_ID
from emopipe.redact import redact
from emopipe.service import EXIT_CONFIG, install_stop_handlers, setup_logging
from services.sink.outputs import record_path

log = logging.getLogger("emopipe.launcher")
#: start order (downstream first, so subscribers are ready); stop order is the reverse
START_ORDER = topology.start_order()
SOURCE_WITH_ID = re.compile(rf"^({CAMERA_ID.pattern})=(.+)$")
LOOKS_NAMED = re.compile(r"^([^=/:\\]+)=(.+)$")  # ID=SRC with an id of any characters (no path or URL before '=')
STABLE_AFTER_S = 30.0  # a stage that ran this long gets its backoff reset
#: a stage that exits this soon after its start, twice in a row with the same status, fails at
#: start-up for a reason a restart will not mend: the run stops with its error
STARTUP_S = 10.0
#: deaths that are not the stage's own failure (someone killed it): always restarted
KILLED = (-signal.SIGKILL, -signal.SIGTERM)


# ---------------------------------------------------------------- configuration


def parse_sources(values: Sequence[str], loop: bool) -> list[SourceConfig]:
    """``SRC`` or ``ID=SRC``; unnamed sources are cam0, cam1, ... by position. An ``ID=`` that is
    not a valid camera id is an error naming it (not a file of that name that does not exist)."""
    sources = []
    for i, value in enumerate(values):
        named = LOOKS_NAMED.match(value)
        if named and not SOURCE_WITH_ID.match(value) and not Path(value).exists():
            raise ConfigError(
                f"--source {value!r}: camera id {named.group(1)!r} must be 1-64 letters, digits, '_' or '-' (A-Z, 0-9)"
            )
        match = SOURCE_WITH_ID.match(value)
        camera, uri = (match.group(1), match.group(2)) if match else (f"cam{i}", value)
        sources.append(SourceConfig(id=camera, uri=uri, loop=loop))
    return sources


def default_sources(want_events: bool) -> list[SourceConfig]:
    """The webcam when there is one, else a real 640x360 face video (looped when only viewing)."""
    if sample_video.webcam_available(0):
        log.info("no --source: using the webcam (index 0)")
        return [SourceConfig(id="cam0", uri="0")]
    path = sample_video.default_video()
    log.info("no --source and no webcam: playing the sample face video %s", path)
    return [SourceConfig(id="cam0", uri=str(path), loop=not want_events)]


def resolve(args: argparse.Namespace) -> Config:
    cfg = config_mod.load(args.config)
    if args.source:
        cfg = dataclasses.replace(cfg, sources=parse_sources(args.source, args.loop))
    elif not cfg.sources:
        cfg = dataclasses.replace(cfg, sources=default_sources(bool(args.events)))
    if args.loop:
        cfg = dataclasses.replace(cfg, sources=[dataclasses.replace(s, loop=True) for s in cfg.sources])
    if args.realtime:
        cfg = config_mod.replace(cfg, "pipeline", realtime=True)
    if args.events:
        cfg = config_mod.replace(cfg, "sink", events=str(Path(args.events).resolve()))
    if args.tracks:
        cfg = config_mod.replace(cfg, "sink", tracks=str(Path(args.tracks).resolve()))
    if args.record:
        cfg = config_mod.replace(cfg, "sink", record=str(Path(args.record).resolve()))
    if args.show:
        cfg = config_mod.replace(cfg, "sink", show=True)
    for stage, count in config_mod.parse_workers(args.workers or []).items():
        cfg = config_mod.replace(cfg, stage, workers=count)
    cfg = dataclasses.replace(cfg, sources=[_absolute(s) for s in cfg.sources])
    return config_mod.validate(cfg)


def _absolute(src: SourceConfig) -> SourceConfig:
    """File sources as absolute paths, so stages may run in any directory."""
    if src.is_live:
        return src
    path = resolve_path(src.uri)
    if not path.exists():
        raise ConfigError(f"source {src.id}: {redact(src.uri)} does not exist")
    return dataclasses.replace(src, uri=str(path.resolve()))


def addresses(cfg: Config) -> list[str]:
    lines = []
    if cfg.viewer.port:
        lines.append(f"viewer:  http://{cfg.viewer.host}:{cfg.viewer.port}/")
    for stage in topology.names():
        section = getattr(cfg, stage)
        ports = (
            metrics_mod.worker_ports(section.metrics_port, section.workers)
            if stage in config_mod.POOLS
            else [section.metrics_port]
        )
        for port in ports if section.metrics_port else []:
            lines.append(f"metrics: {stage:<8} http://{cfg.pipeline.metrics_host}:{port}/metrics")
    return lines


def workers(cfg: Config) -> dict[str, int]:
    return {stage: getattr(cfg, stage).workers for stage in config_mod.POOLS}


# ---------------------------------------------------------------- supervision


@dataclass
class Stage:
    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    restart_at: float | None = None
    early_exit: int | None = None  # the status of its last exit, if that came during start-up

    def start(self) -> None:
        # own process group: Ctrl-C reaches the launcher only, which stops stages in order
        self.process = subprocess.Popen(self.command, start_new_session=True, preexec_fn=_die_with_parent)
        self.started = time.monotonic()
        self.restart_at = None
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def stop(self, timeout: float) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) did not stop in %.0fs; killing it", self.name, proc.pid, timeout)
            proc.kill()
            proc.wait()


def _die_with_parent() -> None:
    """Linux: a stage gets SIGTERM if the launcher itself is killed (no orphaned stages)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def stage_command(stage: str, config_path: Path) -> list[str]:
    return [sys.executable, "-m", f"services.{stage}", "--config", str(config_path)]


class Supervisor:
    def __init__(self, cfg: Config, config_path: Path, stop: threading.Event) -> None:
        self.cfg = cfg
        self.stop = stop
        count = workers(cfg)
        self.stages = [
            Stage(name if k == 0 else f"{name}#{k + 1}", stage_command(name, config_path))
            for name in START_ORDER
            for k in range(count.get(name, 1))
        ]

    def run(self) -> int:
        for stage in self.stages:
            stage.start()
        try:
            while not self.stop.wait(0.2):
                status = self._check()
                if status is not None:
                    return status
            log.info("stopping")
            signum = getattr(self.stop, "signum", None)
            if self.cfg.all_sources_end and signum is not None:  # an analysis cut short is not a success
                return 128 + signum
            return 0
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        for stage in reversed(self.stages):  # capture first, sink last: it writes what is in flight
            stage.stop(self.cfg.pipeline.stop_timeout_s)

    def _check(self) -> int | None:
        """The launcher's exit status once the run is over, else None."""
        now = time.monotonic()
        for stage in self.stages:
            if stage.restart_at is not None:
                if now >= stage.restart_at:
                    stage.start()
                continue
            code = stage.process.poll() if stage.process else None
            if code is None:
                continue
            if stage.name == "sink" and self.cfg.all_sources_end and code in (0, 3, 4, 5):
                log.info("sink finished (exit %d): every source ended", code)
                return code
            if code == EXIT_CONFIG:
                log.error("%s exited with a configuration error; not restarting", stage.name)
                return EXIT_CONFIG
            if self._failed_twice_at_start(stage, code, now):
                log.error(
                    "%s failed at start-up twice with status %d (its error is above); not restarting",
                    stage.name,
                    code,
                )
                return 1
            status = self._schedule_restart(stage, code, now)
            if status is not None:
                return status
        return None

    def _failed_twice_at_start(self, stage: Stage, code: int, now: float) -> bool:
        early = now - stage.started < STARTUP_S and code not in KILLED
        repeated = early and stage.early_exit == code
        stage.early_exit = code if early else None
        return repeated

    def _schedule_restart(self, stage: Stage, code: int, now: float) -> int | None:
        if stage.restarts >= self.cfg.pipeline.max_restarts:
            log.error("%s died %d times; giving up", stage.name, stage.restarts + 1)
            return 1
        if now - stage.started > STABLE_AFTER_S or stage.backoff == 0:
            stage.backoff = self.cfg.pipeline.restart_backoff_s
        else:
            stage.backoff = min(stage.backoff * 2, self.cfg.pipeline.restart_backoff_max_s)
        stage.restarts += 1
        stage.restart_at = now + stage.backoff
        log.error("%s exited with status %d; restart %d in %.1fs", stage.name, code, stage.restarts, stage.backoff)
        return None


# ---------------------------------------------------------------- commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emopipe", description="real-time facial emotion recognition")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start the whole pipeline")
    run.add_argument(
        "--source", action="append", metavar="[ID=]SRC", help="webcam index, video file, URL or folder; repeatable"
    )
    run.add_argument("--events", metavar="FILE", help="write results as JSON lines to FILE (.csv: CSV)")
    run.add_argument("--tracks", metavar="FILE", help="write one JSON line per ended face track to FILE (.csv: CSV)")
    run.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults)")
    run.add_argument("--realtime", action="store_true", help="files behave like cameras: drop stale frames")
    run.add_argument("--loop", action="store_true", help="replay file sources forever")
    run.add_argument("--show", action="store_true", help="also show each camera in an OpenCV window")
    run.add_argument("--record", metavar="FILE", help="record annotated video to FILE")
    run.add_argument(
        "--workers",
        action="append",
        metavar="STAGE=N",
        help="run N workers of detect or classify (default: <stage>.workers, 1); repeatable",
    )
    run.add_argument(
        "--prometheus",
        action="store_true",
        help="also start Prometheus (Debian package prometheus) with deploy/prometheus/prometheus.yml",
    )
    run.add_argument(
        "--prometheus-listen",
        metavar="HOST:PORT",
        default=prometheus_server.DEFAULT_LISTEN,
        help="where --prometheus serves (default: %(default)s, what Grafana's provisioned datasource expects)",
    )
    check = commands.add_parser("check-config", help="validate a config file and print it resolved")
    check.add_argument("file")
    keys = commands.add_parser(
        "keys", help="make CURVE key pairs for curve.keys (a server pair per link, a client pair)"
    )
    keys.add_argument("dir")
    bench_mod.add_arguments(commands.add_parser("bench", help="measure the paper's loop and the pipeline here"))
    recall_mod.add_arguments(
        commands.add_parser(
            "recall", help="measure detection's recall of the full-frame cascade and its YuNet-confirmed boxes"
        )
    )
    evaluate_mod.add_arguments(
        commands.add_parser("evaluate", help="the pipeline's accuracy on labelled videos and stills (LABELS.csv)")
    )
    report_mod.add_arguments(commands.add_parser("report", help="an HTML report with plots of an --events file"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "keys":
        return make_keys(Path(args.dir))
    if args.command == "bench":
        return bench_mod.run(args)
    if args.command == "recall":
        return recall_mod.run(args)
    if args.command == "evaluate":
        return evaluate_mod.run(args)
    if args.command == "report":
        return report_mod.run(args)
    setup_logging("launcher", "INFO")
    stop = install_stop_handlers()
    try:
        cfg = resolve(args)
        keys = curve.load(cfg.curve.keys)
        if keys is not None:
            keys.check()
        check_outputs(cfg, [args.config] if args.config else [])
        if cfg.sink.show and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise ConfigError(
                "--show (sink.show) needs a display, and DISPLAY is not set: use --record FILE or the viewer"
            )
        empty_line_files(cfg)
    except (ConfigError, OSError, subprocess.CalledProcessError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    setup_logging("launcher", cfg.pipeline.log_level)
    with tempfile.TemporaryDirectory(prefix="emopipe-run-") as tmp:
        config_path = Path(tmp) / "config.toml"
        config_path.write_text(config_mod.to_toml(cfg))
        for line in addresses(cfg):
            print(line, flush=True)
        mode = "lossless: every frame analysed" if cfg.lossless else "live: newest frame wins"
        print(f"sources: {', '.join(f'{s.id}={redact(s.uri)}' for s in cfg.sources)} ({mode})", flush=True)
        prometheus = None
        if args.prometheus:
            ports = {stage: getattr(cfg, stage).metrics_port for stage in START_ORDER}
            prometheus = prometheus_server.launch(ports, args.prometheus_listen, workers(cfg))
        try:
            return Supervisor(cfg, config_path, stop).run()
        finally:
            if prometheus is not None:
                prometheus.stop()


def check_outputs(cfg: Config, config_files: Sequence[str]) -> None:
    """Refuse (ConfigError naming both) an output that would overwrite an input or another
    output: events, tracks or a recording that is a source file, the config, or each other."""
    several = len(cfg.sources) > 1
    outputs: list[tuple[str, Path]] = [
        (name, resolve_path(value).resolve())
        for name, value in (("--events", cfg.sink.events), ("--tracks", cfg.sink.tracks))
        if value
    ]
    if cfg.sink.record:
        base = resolve_path(cfg.sink.record).resolve()
        outputs += [("--record", record_path(base, s.id, several)) for s in cfg.sources]
    inputs: list[tuple[str, Path]] = [(f"the config {f}", Path(f).resolve()) for f in config_files]
    inputs += [(f"the source of camera {s.id}", resolve_path(s.uri).resolve()) for s in cfg.sources if not s.is_live]
    seen: dict[Path, str] = {}
    for name, path in outputs:
        for what, source in inputs:
            if path == source or (path.exists() and source.exists() and path.samefile(source)):
                raise ConfigError(f"{name} {path} is {what}: refusing to overwrite it")
        if path in seen and seen[path] != name:
            raise ConfigError(f"{name} and {seen[path]} both write {path}")
        seen[path] = name
        _check_writable(name, path)


def _check_writable(name: str, path: Path) -> None:
    """An output that cannot be written is found now, not at the first frame: a folder in its
    place, a special file for a recording (JSON lines may go to a pipe or a device), or a place
    where no file can be created (tried, and taken back)."""
    if path.is_dir() or (name == "--record" and path.exists() and not path.is_file()):
        raise ConfigError(f"{name} {path} is not a regular file")
    if path.exists() and not path.is_file():
        return  # a FIFO, /dev/stdout: written as it is
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
    except OSError as exc:
        raise ConfigError(f"{name} {path} cannot be written: {exc.strerror or exc}") from exc
    if not existed:
        path.unlink()


def empty_line_files(cfg: Config) -> None:
    """The sink appends (a restarted sink continues its files), so each run starts them empty."""
    for lines in (cfg.sink.events, cfg.sink.tracks):
        if lines:
            path = resolve_path(lines)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("")
            except OSError as exc:
                raise OSError(f"cannot write the JSON-lines file {path}: {exc.strerror or exc}") from exc


def make_keys(directory: Path) -> int:
    if any(directory.glob("*.key*")):
        print(f"emopipe: {directory} already holds keys; not overwriting them", file=sys.stderr)
        return EXIT_CONFIG
    for path in curve.make_keys(directory):
        print(path)
    print(
        f'set curve.keys = "{directory.resolve()}" on every host; a host that only connects needs '
        "client.key_secret and the *.key files, not the other *.key_secret",
        flush=True,
    )
    return 0


def check_config(path: str) -> int:
    try:
        cfg = config_mod.load(path)
    except ConfigError as exc:
        print(f"emopipe: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    shown = dataclasses.replace(cfg, sources=[dataclasses.replace(s, uri=redact(s.uri)) for s in cfg.sources])
    print(config_mod.to_toml(shown))  # credentials masked: this goes to terminals and logs
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
