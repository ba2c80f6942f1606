"""Helpers for the tests: free ports, pipeline configs on ipc:// endpoints, running stages."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from emopipe import bus, messages, topology
from emopipe.workpool import protocol
from emopipe.workpool.broker import Broker
from emopipe.workpool.worker import Connection

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
# The shipped model's weights (its model card's --init for a further cycle).
SHIPPED_WEIGHTS = REPO / "training" / "checkpoints" / "emonet-slim.weights.h5"


def write_model(
    path: Path, size: int, metadata_size: int | None = None, seed: int | None = None, **metadata: str
) -> Path:
    """A tiny ONNX emotion model (uniform probabilities; with ``seed``, random weights)
    taking ``size`` x ``size`` faces, whose metadata says ``metadata_size`` (default:
    ``size``), and any other ``metadata`` entries."""
    import onnx
    from onnx import TensorProto, helper

    from emopipe.labels import EMOTIONS

    count = size * size * len(EMOTIONS)
    values = [0.0] * count if seed is None else np.random.default_rng(seed).normal(0, 1e-3, count).tolist()
    weights = helper.make_tensor("w", TensorProto.FLOAT, [size * size, len(EMOTIONS)], values)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["pixels"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", size, size, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(EMOTIONS)])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    entries = {"labels": json.dumps(list(EMOTIONS)), "input_size": str(metadata_size or size), **metadata}
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def publisher(
    ctx: zmq.Context,
    endpoint: str,
    lossless: bool = True,
    hwm: int = 8,
    subscribe_timeout_s: float = 60.0,
) -> bus.Publisher:
    """A publisher bound on ``endpoint``, as a test feeds a stage (one subscriber awaited, lossless)."""
    return bus.Publisher(
        ctx,
        endpoint,
        lossless=lossless,
        hwm=hwm,
        subscribers=1,
        subscribe_timeout_s=subscribe_timeout_s,
        stop=threading.Event(),
    )


class WorkerHub:
    """What a worker process under test (detect or classify) takes its work from: a lossless
    broker of that stage's pool bound on ``ipc://<ipc>/<into>`` (the worker's input endpoint),
    as capture's hub has."""

    def __init__(self, ctx: zmq.Context, ipc: Path, into: str, stage: str) -> None:
        self.pool = Broker(ctx, f"ipc://{ipc}/{into}", topology.stage(stage), lossless=True)
        self._worker: bytes | None = None

    def worker(self, timeout: float = 30.0) -> bytes:
        """The identity of the first worker that joins (answers meanwhile wait for ``answers``)."""
        if self._worker is None:
            assert wait_for(lambda: self.pool.read() >= 0 and bool(self.pool.workers()), timeout)
            self._worker = self.pool.workers()[0]
        return self._worker

    def submit(self, msg: messages.Message) -> None:
        self.pool.submit(msg.camera, msg.seq, messages.encode(msg, sent=time.time()))

    def send_raw(self, parts: list[Any], timeout: float = 30.0) -> None:
        """Straight to the worker as WORK, as a broken or hostile hub would (waiting while its queue is full)."""
        worker = self.worker()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.pool.sock.send_multipart([worker, protocol.WORK, *parts], zmq.NOBLOCK)
                return
            except zmq.Again:
                assert time.monotonic() < deadline, "the worker takes nothing"
                self.pool.sock.poll(1, zmq.POLLIN)
                self.pool.read()

    def answers(self, count: int, timeout: float = 30.0) -> list[messages.Message]:
        got: list[messages.Message] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            self.pool.sock.poll(100, zmq.POLLIN)
            got.extend(answer.msg for answer in self.pool.pump())
        return got

    def close(self) -> None:
        self.pool.close()


class HandWorker:
    """A pool's worker driven by hand: it takes what it is handed and answers (or not) when told."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        pool: str = "detect",
        prefixes: list[bytes] | None = None,
        shared: str = "",
    ):
        self.conn = Connection(ctx, endpoint, pool, prefixes or [b"frame."], shared=shared)
        self.got: list[tuple[str, int]] = []
        self.messages: list[messages.Message] = []  # as decoded
        self._origin: dict[str, int] = {}

    def take(self, timeout_ms: int = 50) -> list[tuple[str, int]]:
        """Units that came within ``timeout_ms`` (heartbeating meanwhile), as (camera, seq)."""
        new = []
        for origin, parts in self.conn.receive(timeout_ms, 1000):
            msg = messages.decode(parts)
            self.messages.append(msg)
            self._origin[msg.camera] = origin
            new.append((msg.camera, msg.seq))
        self.got.extend(new)
        return new

    def answer(self, camera: str, seq: int) -> None:
        """Answer with no faces."""
        faces = messages.Faces(camera, seq, float(seq), (), np.zeros((0, 48, 48), np.uint8), ())
        assert self.conn.answer(self._origin[camera], messages.encode(faces, sent=time.time()))

    def close(self) -> None:
        self.conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pipeline_toml(ipc: Path, sources: list[tuple[str, Path, bool]], **sections: dict[str, object]) -> str:
    """A config with ipc:// endpoints in ``ipc``, metrics and viewer off unless given in ``sections``."""
    text = "".join(
        f'[[sources]]\nid = "{cam}"\nuri = "{uri}"\nloop = {str(loop).lower()}\n\n' for cam, uri, loop in sources
    )
    text += "[endpoints]\n" + "".join(f'{n} = "ipc://{ipc}/{n}"\n' for n in ("frames", "faces", "results"))
    defaults: dict[str, dict[str, object]] = {
        "capture": {"metrics_port": 0},
        "detect": {"metrics_port": 0},
        "classify": {"metrics_port": 0},
        "sink": {"metrics_port": 0},
        "viewer": {"port": 0},
        "bus": {"subscribe_timeout_s": 60.0},
    }
    for name, values in sections.items():
        defaults.setdefault(name, {}).update(values)
    for name, values in defaults.items():
        text += f"\n[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())
    return text


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (str, Path)):
        return f'"{value}"'
    return repr(value)


def start_stage(stage: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start one stage as its own process, exactly as the launcher does."""
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{stage}", "--config", str(config)], cwd=REPO, stdout=fh, stderr=fh
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def launch(config: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "deploy.launcher", "run", "--config", str(config), *args],
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def run_to_files(tmp: Path, model: Path, sources: Sequence[str], events: Path, tracks: Path) -> str:
    """One complete `emopipe run` of the files ``sources`` (``ID=FILE``, lossless) writing ``events``
    and ``tracks``; its log. A run that does not exit 0 within 120 s fails the caller."""
    ipc = Path(tempfile.mkdtemp(prefix="ep-", dir="/tmp"))
    config, log = tmp / f"{events.name}.toml", tmp / f"{events.name}.log"
    config.write_text(pipeline_toml(ipc, [], classify={"model": model}))
    proc = launch(config, log, *(f"--source={s}" for s in sources), "--events", str(events), "--tracks", str(tracks))
    try:
        code = proc.wait(120)
    finally:
        reap(proc, log)
        shutil.rmtree(ipc, ignore_errors=True)
    assert code == 0, log.read_text()[-3000:]
    return log.read_text()


def run_source(
    tmp: Path, model: Path, source: Path, name: str = "run", **sections: dict[str, object]
) -> dict[str, Any]:
    """`emopipe run --source FILE --events NAME.jsonl` (lossless) with a config of ``sections``;
    its status, config, events text and lines, and log. Waits 120 s at most."""
    ipc = Path(tempfile.mkdtemp(prefix="ep-", dir="/tmp"))
    config = tmp / f"{name}.toml"
    config.write_text(pipeline_toml(ipc, [], classify={"model": model}, **sections))
    events, log = tmp / f"{name}.jsonl", tmp / f"{name}.log"
    proc = launch(config, log, "--source", str(source), "--events", str(events))
    try:
        code = proc.wait(120)
    finally:
        reap(proc, log)
        shutil.rmtree(ipc, ignore_errors=True)
    text = events.read_text() if events.exists() else ""
    lines = [json.loads(line) for line in text.splitlines()]
    return {"code": code, "config": config, "text": text, "lines": lines, "log": log.read_text()}


def written_so_far(path: Path) -> bytes:
    """What a running pipeline has written to ``path`` so far; b"" while it is not there. Polled from
    a test, a file can vanish between a look and a read: the launcher creates each output and removes
    it again at start to see that it can be written."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def json_and_csv_runs(tmp: Path, model: Path, sources: Sequence[str]) -> dict[str, Path]:
    """The same run twice, writing JSON lines then CSV: ``out.jsonl``, ``tracks.jsonl``,
    ``out.csv``, ``tracks.csv`` in ``tmp``."""
    files = {name: tmp / name for name in ("out.jsonl", "tracks.jsonl", "out.csv", "tracks.csv")}
    run_to_files(tmp, model, sources, files["out.jsonl"], files["tracks.jsonl"])
    run_to_files(tmp, model, sources, files["out.csv"], files["tracks.csv"])
    return files


def stage_pids(log: Path) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"started ([\w#]+) \(pid (\d+)\)", log.read_text())}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def reap(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Stop the launcher; kill any stage it left behind (a test failure, not the normal case)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in stage_pids(log).values():
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def fetch(url: str, deadline: float) -> bytes:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read()
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def scrape_value(port: int, sample: str) -> float:
    """One sample's value from a stage's /metrics, e.g. ``emopipe_frames_processed_total{…}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
    raise AssertionError(f"no {sample}")


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether ``condition`` holds within ``timeout`` s; an OSError (a server not up yet) counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except OSError as exc:
            log.debug("not yet: %s", exc)
        time.sleep(0.1)
    return False


def garbage_like(good: list[Any], rng: np.random.Generator) -> list[list[Any]]:
    """Messages on ``good``'s topic that the decoder must refuse: random header bytes, a shape
    that lies about the byte count, too many parts, a header with a NaN time."""
    header = msgpack.unpackb(good[1])
    nan_time = msgpack.packb({**header, "ts": float("nan")})
    return [
        [good[0], rng.bytes(40), b""],
        [good[0], good[1], b"short"],
        [good[0]] + [b"x"] * 6,
        [good[0], nan_time, good[2]],
    ]


def green_pixels(image: np.ndarray) -> int:
    b, g, r = (image[..., i].astype(int) for i in range(3))
    return int(np.count_nonzero((g > 170) & (r < 90) & (b < 90)))


def shipped_keras_model() -> Any:
    """The shipped weights in a Keras ``emonet-slim`` (needs the training extra)."""
    from training.models import build

    model = build("emonet-slim")
    model.load_weights(SHIPPED_WEIGHTS)
    return model


RTSP_SERVER = REPO / "deploy" / "rtsp_camera.py"
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")
RTSP_PASSWORD = "Zq7-s3cret"


def rtsp_server_available() -> bool:
    """Debian's GStreamer RTSP server and its Python bindings (what deploy/rtsp_camera.py needs)."""
    if SYSTEM_PYTHON is None:
        return False
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode == 0


class RtspCamera:
    """The RTSP server as a camera that can be switched off and on again."""

    def __init__(self, image: Path, port: int, log: Path) -> None:
        self.image, self.port, self.log = image, port, log
        self.proc: subprocess.Popen[str] | None = None

    def url(self, password: str = RTSP_PASSWORD) -> str:
        return f"rtsp://viewer:{password}@127.0.0.1:{self.port}/cam"

    def start(self) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [
                    SYSTEM_PYTHON or "python3",
                    str(RTSP_SERVER),
                    str(self.image),
                    "--port",
                    str(self.port),
                    "--user",
                    "viewer",
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "RTSP_PASSWORD": RTSP_PASSWORD},
            )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
