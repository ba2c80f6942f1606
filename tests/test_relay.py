"""The middle stages' loop: one lane per camera, in order; with threads, cameras in parallel."""

from __future__ import annotations

import threading
import time

import numpy as np

from emopipe import relay
from emopipe.messages import EndOfStream, Frame, Message
from emopipe.relay import Lanes


def frame(camera: str, seq: int) -> Frame:
    return Frame(camera, seq, float(seq), np.zeros((4, 4, 3), np.uint8))


def drain(lanes: Lanes, timeout: float = 10.0) -> list[Message]:
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while (lanes.busy or any(lanes.waiting.values())) and time.monotonic() < deadline:
        out += lanes.step()
        time.sleep(0.001)
    return out


def test_with_threads_cameras_run_in_parallel_each_in_order_with_its_end_of_stream_last() -> None:
    both = threading.Barrier(2, timeout=10)  # broken unless two cameras are handled at the same time
    threads: dict[str, set[str]] = {}

    def handle(msg: Message) -> Message:
        if msg.seq == 0:
            both.wait()
        threads.setdefault(msg.camera, set()).add(threading.current_thread().name)
        assert isinstance(msg, Frame)
        return Frame(msg.camera, msg.seq, msg.ts * 10, msg.image)

    lanes = Lanes(handle, threads=2, lossless=True)
    work: list[Message] = [frame("a", 0), frame("b", 0), frame("a", 1), EndOfStream("a", 2, 0.0), frame("b", 1)]
    assert sum(lanes.add(m) for m in work) == 0  # lossless: nothing is stale
    out = drain(lanes)
    lanes.close()
    per_camera = {c: [(type(m).__name__, m.seq, m.ts) for m in out if m.camera == c] for c in "ab"}
    assert per_camera == {
        "a": [("Frame", 0, 0.0), ("Frame", 1, 10.0), ("EndOfStream", 2, 0.0)],
        "b": [("Frame", 0, 0.0), ("Frame", 1, 10.0)],
    }
    assert threads["a"] != threads["b"] or len(threads["a"]) > 1  # not one thread doing both


def test_live_a_waiting_frame_is_replaced_by_its_cameras_newer_one_and_counted_stale() -> None:
    release = threading.Event()

    def handle(msg: Message) -> Message:
        release.wait(10)
        return msg

    lanes = Lanes(handle, threads=2, lossless=False)
    assert lanes.add(frame("a", 0)) == 0
    assert list(lanes.step()) == [] and lanes.busy  # 0 is being handled
    assert lanes.add(frame("a", 1)) == 0
    assert lanes.add(EndOfStream("a", 9, 0.0)) == 0
    assert lanes.add(frame("a", 2)) == 1  # 1 waited: stale
    release.set()
    out = drain(lanes)
    lanes.close()
    assert [(type(m).__name__, m.seq) for m in out] == [("Frame", 0), ("EndOfStream", 9), ("Frame", 2)]


def test_without_threads_each_output_is_made_when_it_is_asked_for() -> None:
    handled: list[int] = []

    def handle(msg: Message) -> Message:
        handled.append(msg.seq)
        return msg

    lanes = Lanes(handle, threads=1, lossless=True)
    lanes.add(frame("a", 0))
    lanes.add(frame("a", 1))
    outputs = lanes.step()
    assert handled == []
    assert next(outputs).seq == 0 and handled == [0]  # published before the next is handled
    assert [m.seq for m in outputs] == [1] and handled == [0, 1]
    assert not lanes.busy


def test_lossless_lanes_say_when_enough_waits_so_the_loop_stops_reading() -> None:
    release = threading.Event()

    def handle(msg: Message) -> Message:
        release.wait(10)
        return msg

    lanes = Lanes(handle, threads=2, lossless=True)
    for seq in range(relay.LOSSLESS_WAITING + 1):
        assert not lanes.full
        lanes.add(frame("a", seq))
        list(lanes.step())  # the first starts; the others wait in a's lane
    assert lanes.full  # back-pressure: the publisher waits instead of this lane growing
    release.set()
    lanes.wait(5)
    assert len(drain(lanes)) == relay.LOSSLESS_WAITING + 1 and not lanes.full
    lanes.close()
