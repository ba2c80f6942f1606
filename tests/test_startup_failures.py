"""Start-up failures a restart cannot mend: one message naming the cause, the configuration
exit status, and no restart loop (the launcher stops on the first EXIT_CONFIG)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from emopipe import metrics, service
from emopipe.config import DetectConfig
from helpers import REPO, pipeline_toml
from services.detect import detector

#: sockets a case holds open until the test ends
HELD: list[socket.socket] = []


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A TCP port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])
    while HELD:
        HELD.pop().close()


def run_pipeline(tmp_path: Path, config: str, *args: str) -> tuple[int, str, float]:
    path = tmp_path / "c.toml"
    path.write_text(config)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "deploy.launcher", "run", "--config", str(path), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


Case = Callable[[Path, Path, int], tuple[str, list[str], str]]


def not_a_video(tmp: Path, video: Path, port: int) -> tuple[str, list[str], str]:
    bad = tmp / "notavideo.mp4"
    bad.write_text("this is not a video\n")
    return pipeline_toml(tmp, [("cam0", bad, False)]), [], f"source cam0: cannot open {bad}"


def metrics_port_in_use(tmp: Path, video: Path, port: int) -> tuple[str, list[str], str]:
    config = pipeline_toml(tmp, [("cam0", video, False)], sink={"metrics_port": port})
    return config, [], f"sink cannot start: cannot serve metrics on 127.0.0.1:{port}: Address already in use"


def every_worker_metrics_port_in_use(tmp: Path, video: Path, port: int) -> tuple[str, list[str], str]:
    """A pooled stage's worker takes the next free port of port, port + 10, ...: here none is free."""
    config = pipeline_toml(tmp, [("cam0", video, False)], classify={"metrics_port": port})
    taken = [socket.socket() for _ in range(metrics.WORKER_PORTS - 1)]
    for k, sock in enumerate(taken, start=1):
        sock.bind(("127.0.0.1", port + metrics.WORKER_PORT_STEP * k))
        sock.listen()
        HELD.append(sock)
    last = port + metrics.WORKER_PORT_STEP * (metrics.WORKER_PORTS - 1)
    cause = (
        f"classify cannot start: cannot serve metrics on 127.0.0.1:{port}..{last} (every 10): Address already in use"
    )
    return config, [], cause


def curve_keys_missing(tmp: Path, video: Path, port: int) -> tuple[str, list[str], str]:
    config = pipeline_toml(tmp, [("cam0", video, False)], curve={"keys": tmp / "keys"})
    return config, [], f"curve.keys {tmp / 'keys'} is not a directory (make one with `emopipe keys {tmp / 'keys'}`)"


def viewer_port_in_use(tmp: Path, video: Path, port: int) -> tuple[str, list[str], str]:
    config = pipeline_toml(tmp, [("cam0", video, False)], viewer={"port": port})
    return config, [], f"sink cannot start: cannot serve the viewer on 127.0.0.1:{port}: Address already in use"


def endpoint_in_use(tmp: Path, video: Path, port: int) -> tuple[str, list[str], str]:
    config = pipeline_toml(tmp, [("cam0", video, False)]).replace(
        f'faces = "ipc://{tmp}/faces"', f'faces = "tcp://127.0.0.1:{port}"'
    )
    return config, [], f"capture cannot start: cannot bind tcp://127.0.0.1:{port}: Address already in use"


def model_not_onnx(tmp: Path, video: Path, port: int) -> tuple[str, list[str], str]:
    model = tmp / "emotion.onnx"
    model.write_bytes(b"not an onnx model")
    config = pipeline_toml(tmp, [("cam0", video, False)], classify={"model": model})
    return config, [], f"classify ERROR emopipe.classify: model file {model} cannot be loaded"


def events_not_writable(tmp: Path, video: Path, port: int) -> tuple[str, list[str], str]:
    events = tmp / "events.jsonl"
    events.mkdir()
    config = pipeline_toml(tmp, [("cam0", video, False)])
    return config, ["--events", str(events)], f"--events {events} is not a regular file"


def unknown_camera(tmp: Path, video: Path, port: int) -> tuple[str, list[str], str]:
    config = pipeline_toml(tmp, [("cam0", video, False)], sink={"cameras": ["door"]})
    return config, [], "'sink.cameras' names ['door'], which no source has (sources: ['cam0'])"


@pytest.mark.parametrize(
    "case",
    [
        not_a_video,
        metrics_port_in_use,
        every_worker_metrics_port_in_use,
        viewer_port_in_use,
        curve_keys_missing,
        endpoint_in_use,
        model_not_onnx,
        events_not_writable,
        unknown_camera,
    ],
)
def test_a_start_up_failure_gives_one_message_and_the_config_status(
    tmp_path: Path, carphone: Path, taken_port: int, case: Case
) -> None:
    config, args, cause = case(tmp_path, carphone, taken_port)
    code, output, took = run_pipeline(tmp_path, config, *args)
    assert code == service.EXIT_CONFIG, output
    assert output.count(cause) == 1, output
    assert "restart " not in output, output  # no retry with growing delays
    assert took < 30, output


def test_a_missing_cascade_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detector, "CASCADE_FILE", "no_such_cascade.xml")
    with pytest.raises(FileNotFoundError, match=r"the Haar cascade .*no_such_cascade\.xml is missing"):
        detector.FaceDetector(DetectConfig(), 48)


def test_starting_turns_an_os_or_zmq_error_into_the_config_status(caplog: pytest.LogCaptureFixture) -> None:
    for error in (OSError("cannot serve metrics on 127.0.0.1:9: Address already in use"), zmq.ZMQError(98, "x")):
        with pytest.raises(SystemExit) as exited, service.starting("sink"):
            raise error
        assert exited.value.code == service.EXIT_CONFIG
    assert "sink cannot start: cannot serve metrics on 127.0.0.1:9" in caplog.text
