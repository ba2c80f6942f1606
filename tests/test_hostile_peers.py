"""Hostile peers on every endpoint a live pipeline binds: its three publishers (ZeroMQ) and
its HTTP ports (each stage's metrics, the viewer). The pipeline keeps running without a
restart, results keep flowing, memory stays flat and every refused message is counted."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import zmq

from emopipe import bus
from helpers import fetch, free_port, launch, pipeline_toml, reap, scrape_value, stage_pids, wait_for, written_so_far

SUBSCRIPTIONS = 100_000  # random ones, per publisher
GARBAGE = 5_000  # messages that are not subscriptions at all, per publisher
#: the endpoints bound (all by capture, the hub: detect and classify workers and the sink connect)
PUBLISHERS = ("frames", "faces", "results")


def flood_publisher(ctx: zmq.Context, endpoint: str, rng: np.random.Generator) -> list[zmq.Socket]:
    """Random subscriptions, then garbage messages of 1-20 random parts, then raw bytes that
    are not ZeroMQ at all, then a message over what a publisher accepts. Returns the sockets,
    open: what they queued is still being delivered."""
    flood = ctx.socket(zmq.DEALER)
    flood.setsockopt(zmq.SNDHWM, 0)
    flood.connect(endpoint)
    for raw in rng.integers(0, 256, size=(SUBSCRIPTIONS, 24), dtype=np.uint8):
        flood.send_multipart([bus.SUBSCRIBE, raw.tobytes()])
    for count in rng.integers(1, 21, size=GARBAGE):
        flood.send_multipart([rng.bytes(int(n)) for n in rng.integers(1, 200, size=count)])
    with socket.socket(socket.AF_UNIX) as raw_peer:
        raw_peer.connect(endpoint.removeprefix("ipc://"))
        raw_peer.sendall(rng.bytes(64 << 10))
    big = ctx.socket(zmq.DEALER)
    big.connect(endpoint)
    big.send_multipart([bus.SUBSCRIBE, b"x" * (bus.MAX_INCOMING_BYTES + 1)])
    return [flood, big]


def flood_http(port: int, rng: np.random.Generator) -> None:
    """Connections that send random bytes instead of HTTP, and one that sends nothing."""
    silent = socket.create_connection(("127.0.0.1", port))
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as peer:
            peer.sendall(rng.bytes(4096) + b"\r\n\r\n")
    silent.close()


def test_floods_on_every_bound_endpoint_leave_the_live_pipeline_running_flat_and_counting(
    ipc_dir: Path, carphone: Path, model_path: Path
) -> None:
    ports = {stage: free_port() for stage in ("capture", "detect", "classify", "sink")}
    viewer = free_port()
    config = ipc_dir / "c.toml"
    sections: dict[str, dict[str, object]] = {stage: {"metrics_port": port} for stage, port in ports.items()}
    sections["classify"]["model"] = model_path
    config.write_text(pipeline_toml(ipc_dir, [], viewer={"port": viewer}, **sections))
    log, events = ipc_dir / "run.log", ipc_dir / "events.jsonl"
    proc = launch(config, log, "--source", f"cam0={carphone}", "--loop", "--realtime", "--events", str(events))

    def lines_after(since: float) -> int:
        raw = written_so_far(events)
        tail = raw[: raw.rfind(b"\n") + 1].splitlines()[-30:]
        return sum(json.loads(line)["ts"] > since for line in tail)

    refused = 'emopipe_subscriptions_refused_total{{stage="{}"}}'
    ctx = zmq.Context()
    try:
        assert wait_for(lambda: lines_after(0) >= 3, 60), log.read_text()
        pids = stage_pids(log)
        processes = {stage: psutil.Process(pid) for stage, pid in pids.items()}
        time.sleep(2.0)  # settled
        before = {stage: p.memory_info().rss for stage, p in processes.items()}
        rng = np.random.default_rng(0)
        peers = [flood_publisher(ctx, f"ipc://{ipc_dir}/{name}", rng) for name in PUBLISHERS]
        for port in [*ports.values(), viewer]:
            flood_http(port, rng)
        # Each is counted. The oversized one is cut off by libzmq before it is read; the raw bytes
        # may add some (libzmq reads a peer without the ZMTP 2+ greeting as ZMTP 1.0 frames).
        expected = len(PUBLISHERS) * (SUBSCRIPTIONS + GARBAGE)

        def counted() -> float:
            return scrape_value(ports["capture"], refused.format("capture"))

        assert wait_for(lambda: counted() >= expected, 60), (
            counted(),
            log.read_text()[-3000:],
            lines_after(time.time() - 5),
        )
        after = {stage: p.memory_info().rss for stage, p in processes.items()}
        flooded = time.time()
        assert wait_for(lambda: lines_after(flooded) >= 3, 10), "results stopped after the floods"
        assert stage_pids(log) == pids, "a stage was restarted"
        jpeg = fetch(f"http://127.0.0.1:{viewer}/snapshot/cam0.jpg", time.monotonic() + 5)
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) is not None
        report = {s: f"{before[s] / 1e6:.0f} -> {after[s] / 1e6:.0f} MB" for s in before}
        print("RSS before and after the floods:", report)
        assert all(after[s] - before[s] < 50e6 for s in before), report
        assert proc.poll() is None
        assert len(peers) == len(PUBLISHERS)  # open until here: they were still delivering
    finally:
        ctx.destroy(linger=0)
        proc.terminate()
        code = proc.wait(30)
        reap(proc, log)
    text = log.read_text()
    assert code == 0 and "exited with status" not in text, text[-3000:]  # every stage stopped cleanly
    assert 0 < text.count("refused") <= 3 * 2 * 4, text[-3000:]  # throttled: a few lines per publisher
