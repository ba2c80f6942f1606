"""Helpers for the tests: free ports, pipeline configs on ipc:// endpoints, running stages."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
