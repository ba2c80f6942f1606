"""The workers' side of the work-pool protocol: lanes per camera, heartbeats while a unit runs,
and a pipeline shape taken from the topology table (a throwaway stage is one row and a handler)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry

from emopipe import messages, metrics, topology
from emopipe.config import Config
from emopipe.messages import Box, FaceResult, Faces, Frame, Message, Results
from emopipe.waker import Waker
from emopipe.workpool import protocol
from emopipe.workpool.broker import Answer, Broker
from emopipe.workpool.worker import Connection, Lanes, run
from helpers import publisher, wait_for
from services.capture.hub import Hub

LABELS = ("angry", "happy", "neutral")


def frame(camera: str, seq: int) -> Frame:
    return Frame(camera, seq, float(seq), np.zeros((4, 4, 3), np.uint8))


def drain(lanes: Lanes, timeout: float = 10.0) -> list[Message]:
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while (lanes.running or any(lanes.waiting.values())) and time.monotonic() < deadline:
        out += lanes.step()
        time.sleep(0.001)
    return out


def test_a_unit_done_wakes_the_loop_through_the_waker() -> None:
    """The loop polls the waker's fd beside its sockets: a handler finishing sets it (no polling
    every few ms to notice), and after ``clear`` it stays quiet until the next unit is done."""
    release = threading.Event()

    def handle(msg: Message) -> Message:
        release.wait(10)
        return msg

    waker = Waker()
    lanes = Lanes(handle, threads=1, waker=waker)
    poller = zmq.Poller()
    poller.register(waker.fd, zmq.POLLIN)
    try:
        lanes.add(frame("a", 0))
        assert list(lanes.step()) == []  # started, still running
        assert poller.poll(100) == []  # nothing done yet: the waker is quiet
        release.set()
        assert poller.poll(10_000) == [(waker.fd, zmq.POLLIN)]  # done: the loop wakes
        waker.clear()
        assert [m.seq for m in lanes.step()] == [0]
        assert poller.poll(100) == []  # cleared, and nothing else running
    finally:
        lanes.close()
        waker.close()


def test_cameras_run_in_parallel_each_in_order() -> None:
    both = threading.Barrier(2, timeout=10)  # broken unless two cameras are handled at the same time
    threads: dict[str, set[str]] = {}

    def handle(msg: Message) -> Message:
        if msg.seq == 0:
            both.wait()
        threads.setdefault(msg.camera, set()).add(threading.current_thread().name)
        assert isinstance(msg, Frame)
        return Frame(msg.camera, msg.seq, msg.ts * 10, msg.image)

    lanes = Lanes(handle, threads=2)
    for msg in (frame("a", 0), frame("b", 0), frame("a", 1), frame("b", 1), frame("a", 2)):
        lanes.add(msg)
    out = drain(lanes)
    lanes.close()
    per_camera = {c: [(m.seq, m.ts) for m in out if m.camera == c] for c in "ab"}
    assert per_camera == {"a": [(0, 0.0), (1, 10.0), (2, 20.0)], "b": [(0, 0.0), (1, 10.0)]}
    assert threads["a"] != threads["b"] or len(threads["a"]) > 1  # not one thread doing both


def test_lanes_stop_reading_when_enough_waits() -> None:
    release = threading.Event()

    def handle(msg: Message) -> Message:
        release.wait(10)
        return msg

    lanes = Lanes(handle, threads=2)
    for seq in range(protocol.WORKER_WAITING + 1):
        assert lanes.room > 0
        lanes.add(frame("a", seq))
        list(lanes.step())  # the first starts; the others wait in a's lane
    assert lanes.room == 0  # back-pressure: the broker's queue to this worker fills instead
    release.set()
    lanes.wait(5)
    assert len(drain(lanes)) == protocol.WORKER_WAITING + 1 and lanes.room == protocol.WORKER_WAITING
    lanes.close()


@pytest.fixture
def stop(zmq_ctx: zmq.Context) -> Iterator[threading.Event]:
    """Set at the end of the test; the worker threads end before the context does."""
    event = threading.Event()
    yield event
    event.set()
    for thread in threading.enumerate():
        if thread.name.startswith("worker-"):
            thread.join(10)


def start_worker(
    ctx: zmq.Context, endpoint: str, stage: topology.Stage, handle: Callable[[Message], Message], stop: threading.Event
) -> threading.Thread:
    """A worker loop of ``stage`` on its own thread, as a detect or classify process runs it."""
    assert stage.takes is not None
    conn = Connection(ctx, endpoint, stage.name, [messages.topic(stage.takes.kind)])
    found = metrics.create(CollectorRegistry(), "detect", ["cam0"])
    expected = messages.TYPES[stage.takes.kind]

    def loop() -> None:
        try:
            run(stage.name, conn, expected, handle, found, stop)
        finally:
            conn.leave()
            conn.close(linger=100)

    thread = threading.Thread(target=loop, name=f"worker-{stage.name}", daemon=True)
    thread.start()
    return thread


def test_a_worker_busy_longer_than_the_liveness_keeps_its_units(
    zmq_ctx: zmq.Context, ipc_dir: Path, stop: threading.Event
) -> None:
    """The heartbeat is its own frame, sent by the loop while the handler runs on another thread."""
    endpoint = f"ipc://{ipc_dir}/frames"
    broker = Broker(zmq_ctx, endpoint, topology.stage("detect"), lossless=True)

    def slow(msg: Message) -> Message:
        time.sleep(protocol.LIVENESS_S * 2.5)
        return Faces(msg.camera, msg.seq, msg.ts, (), np.zeros((0, 48, 48), np.uint8))

    start_worker(zmq_ctx, endpoint, topology.stage("detect"), slow, stop)
    broker.submit("cam0", 0, messages.encode(frame("cam0", 0), sent=time.time()))
    answers: list[Answer] = []

    def answered() -> bool:
        answers.extend(broker.pump())
        return bool(answers)

    assert wait_for(answered, 15)
    assert [(a.msg.camera, a.msg.seq) for a in answers] == [("cam0", 0)]
    assert broker.counts["workers_lost"] == 0 and broker.counts["answers"] == 1
    broker.close()


def detect(msg: Message) -> Message:
    return Faces(msg.camera, msg.seq, msg.ts, (Box(0, 0, 4, 4),), np.zeros((1, 48, 48), np.uint8), (7,))


def classify(msg: Message) -> Message:
    assert isinstance(msg, Faces)
    faces = tuple(
        FaceResult(b, "neutral", 0.5, (0.25, 0.25, 0.5), t) for b, t in zip(msg.boxes, msg.tracks, strict=True)
    )
    return Results(msg.camera, msg.seq, msg.ts, faces, LABELS)


def cheer(msg: Message) -> Message:
    """A throwaway stage: every face is happy."""
    assert isinstance(msg, Results)
    faces = tuple(dataclasses.replace(f, emotion="happy", probabilities=(0.0, 1.0, 0.0)) for f in msg.faces)
    return dataclasses.replace(msg, faces=faces)


def test_a_stage_added_to_the_table_gets_every_frame_in_order(
    zmq_ctx: zmq.Context, ipc_dir: Path, stop: threading.Event
) -> None:
    """One row (between classify and the sink) and a handler: the hub hands each result through it."""
    row = topology.Stage(
        "cheer", topology.Link("cheer", "results", "ipc://{runtime}/cheer"), 9105, "results", topology.LEAST_BUSY, 2
    )
    stages = (*topology.STAGES[:3], row, topology.STAGES[3])
    topology.check(stages)
    handlers = {"detect": detect, "classify": classify, "cheer": cheer}
    pools = []
    for stage in topology.pools(stages):
        assert stage.takes is not None
        endpoint = f"ipc://{ipc_dir}/{stage.takes.name}"
        pools.append(Broker(zmq_ctx, endpoint, stage, lossless=True))
        start_worker(zmq_ctx, endpoint, stage, handlers[stage.name], stop)
    results = publisher(zmq_ctx, f"ipc://{ipc_dir}/results", subscribe_timeout_s=10)
    sink = zmq_ctx.socket(zmq.DEALER)
    sink.connect(f"ipc://{ipc_dir}/results")
    sink.send_multipart([b"SUBSCRIBE", b"results.", b"eos."])
    hub = Hub(pools, results, Config(), metrics.create(CollectorRegistry(), "capture", ["cam0"]))
    for seq in range(3):
        hub.frame(frame("cam0", seq), time.time())
    got: list[Results] = []

    def pumped() -> bool:
        assert hub.pump()
        while sink.poll(0):
            msg = messages.decode(sink.recv_multipart())
            assert isinstance(msg, Results)
            got.append(msg)
        return len(got) == 3

    assert wait_for(pumped, 15)
    assert [r.seq for r in got] == [0, 1, 2]
    assert [(f.emotion, f.track) for r in got for f in r.faces] == [("happy", 1)] * 3  # the hub's track id
    sink.close(linger=0)
    results.close()
    for pool in pools:
        pool.close()


def test_a_table_whose_stages_do_not_fit_is_refused_naming_the_row() -> None:
    row = topology.Stage("blur", topology.Link("blur", "frame", "ipc://x"), 9105, "frame", topology.LEAST_BUSY, 1)
    with pytest.raises(ValueError, match="'blur' takes 'frame', but the stage before it gives 'results'"):
        topology.check((*topology.STAGES[:3], row, topology.STAGES[3]))
    topology.check()  # the pipeline's own
