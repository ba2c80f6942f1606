"""Two hosts (network namespaces joined by a veth pair): capture and sink on one, detect and
classify workers on the other, over TCP with CURVE and JPEG frames; peers without the key get
nothing in or out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from emopipe import curve
from helpers import REPO, pipeline_toml, stop

SUDO: list[str] = [] if os.geteuid() == 0 else ["sudo", "-n"]
pytestmark = pytest.mark.skipif(
    shutil.which("ip") is None or (bool(SUDO) and shutil.which("sudo") is None),
    reason="needs iproute2's ip and root (or passwordless sudo) for network namespaces",
)
A_IP, B_IP = "10.211.0.1", "10.211.0.2"


@dataclass
class Hosts:
    a: str
    b: str

    def run(self, host: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as fh:
            return subprocess.Popen([*SUDO, "ip", "netns", "exec", host, *args], cwd=REPO, stdout=fh, stderr=fh)


def ip(*args: str) -> None:
    subprocess.run([*SUDO, "ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    a, b = f"epa{os.getpid()}", f"epb{os.getpid()}"
    ip("netns", "add", a)
    ip("netns", "add", b)
    try:
        ip("link", "add", f"va{os.getpid()}", "type", "veth", "peer", "name", f"vb{os.getpid()}")
        for ns, dev, addr in ((a, f"va{os.getpid()}", A_IP), (b, f"vb{os.getpid()}", B_IP)):
            ip("link", "set", dev, "netns", ns)
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield Hosts(a, b)
    finally:
        for ns in (a, b):  # deleting a namespace deletes its end of the veth pair, and so the pair
            subprocess.run([*SUDO, "ip", "netns", "del", ns], capture_output=True, timeout=30)


#: a peer on host B that tries to join as a detect worker, to subscribe to frames and results,
#: and to send a forged answer; it prints how many messages it got. With the client's key
#: ("client-key", the check that the probe can see something) it only subscribes to results.
ROGUE = textwrap.dedent(
    """
    import json, sys, time, zmq, zmq.auth
    from emopipe import bus, messages
    mode, keys, a_ip = sys.argv[1], sys.argv[2], sys.argv[3]
    ctx = zmq.Context()
    socks = []
    for port, head in ((5555, [b"SUBSCRIBE", b"@detect", b"frame."]), (5555, [b"SUBSCRIBE", b"frame."]),
                       (5557, [b"SUBSCRIBE", b"results."]), (5556, [b"SUBSCRIBE", b"@classify", b"faces."])):
        if mode == "client-key" and port != 5557:
            continue
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        if mode == "wrong-key":
            s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
        if mode == "client-key":
            s.curve_publickey, s.curve_secretkey = zmq.auth.load_certificate(f"{keys}/client.key_secret")
        if mode != "no-key":
            link = {5555: "frames", 5556: "faces", 5557: "results"}[port]
            s.curve_serverkey = zmq.auth.load_certificate(f"{keys}/{link}.key")[0]
        s.connect(f"tcp://{a_ip}:{port}")
        socks.append((s, head))
    got = 0
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        for s, head in socks:
            try:
                s.send_multipart(head, zmq.NOBLOCK)
                if mode != "client-key":
                    s.send_multipart([b"results.cam0.", b"forged"], zmq.NOBLOCK)
            except zmq.Again:
                pass  # not connected: the handshake failed, which is the point
            while s.poll(0):
                s.recv_multipart()
                got += 1
        time.sleep(0.1)
    print(json.dumps({"mode": mode, "received": got}))
    """
)


def test_capture_and_sink_on_one_host_workers_on_another_over_curve_and_rogue_peers_get_nothing(
    hosts: Hosts, tmp_path: Path, carphone: Path, model_path: Path
) -> None:
    keys_a = tmp_path / "keys"
    curve.make_keys(keys_a)
    keys_b = tmp_path / "keys-b"  # a host that only connects: the client's secret and the public keys
    keys_b.mkdir()
    for path in [*keys_a.glob("*.key"), keys_a / "client.key_secret"]:
        shutil.copy2(path, keys_b / path.name)
    endpoints = {name: f"tcp://{A_IP}:{port}" for name, port in (("frames", 5555), ("faces", 5556), ("results", 5557))}
    events = tmp_path / "out.jsonl"

    def config(name: str, sources: list[tuple[str, Path, bool]], **sections: dict[str, object]) -> Path:
        text = pipeline_toml(tmp_path, sources, **sections)
        text = text.replace("[endpoints]\n", "[endpoints-ipc]\n", 1)
        cut = text.index("[endpoints-ipc]")
        rest = text[cut:].split("\n", 4)[4]  # the three ipc:// lines
        text = text[:cut] + "[endpoints]\n" + "".join(f'{k} = "{v}"\n' for k, v in endpoints.items()) + rest
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return path

    jpeg: dict[str, object] = {"frames_jpeg_quality": 90}  # frames cross the link JPEG-compressed
    host_a = config("a", [("cam0", carphone, False)], curve={"keys": keys_a}, sink={"events": events}, bus=jpeg)
    host_b = config("b", [], curve={"keys": keys_b}, pipeline={"mode": "lossless"}, classify={"model": model_path})
    python = [sys.executable, "-m"]
    procs = [
        hosts.run(hosts.a, *python, "services.sink", "--config", str(host_a), log=tmp_path / "sink.log"),
        hosts.run(hosts.b, *python, "services.detect", "--config", str(host_b), log=tmp_path / "detect.log"),
        hosts.run(hosts.b, *python, "services.classify", "--config", str(host_b), log=tmp_path / "classify.log"),
    ]
    rogues = [
        hosts.run(hosts.b, sys.executable, "-c", ROGUE, mode, str(keys_b), A_IP, log=tmp_path / f"rogue-{mode}.log")
        for mode in ("no-key", "wrong-key", "client-key")
    ]
    procs.append(hosts.run(hosts.a, *python, "services.capture", "--config", str(host_a), log=tmp_path / "cap.log"))
    try:
        code = procs[0].wait(120)  # the sink exits 0 once every frame has its line
        for rogue in rogues:
            assert rogue.wait(30) == 0
    finally:
        for proc in procs:
            stop(proc)
    logs = "".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(tmp_path.glob("*.log")))
    assert code == 0, logs
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(120)), logs
    assert sum(len(line["faces"]) for line in lines) > 60  # the worker host found and labelled the face
    reports = {}
    for mode in ("no-key", "wrong-key", "client-key"):
        report = json.loads((tmp_path / f"rogue-{mode}.log").read_text().strip().splitlines()[-1])
        reports[report["mode"]] = report["received"]
    assert reports["no-key"] == reports["wrong-key"] == 0, logs
    assert reports["client-key"] > 0  # the same probe with the key sees the results go by
    assert "refused" not in (tmp_path / "cap.log").read_text()  # nothing they sent reached capture
