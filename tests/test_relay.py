"""The middle stages' loop: with threads, cameras in parallel, each camera's messages in order."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from emopipe import relay
from emopipe.messages import Frame, Message


def frame(camera: str, seq: int) -> Frame:
    return Frame(camera, seq, float(seq), np.zeros((4, 4, 3), np.uint8))


def test_with_a_pool_cameras_run_in_parallel_each_in_order_and_outputs_keep_the_input_order() -> None:
    both = threading.Barrier(2, timeout=10)  # broken unless two cameras are handled at the same time
    seen: dict[str, list[int]] = {}
    threads: dict[str, set[str]] = {}

    def handle(msg: Message) -> Message:
        if msg.seq == 0:
            both.wait()
        seen.setdefault(msg.camera, []).append(msg.seq)
        threads.setdefault(msg.camera, set()).add(threading.current_thread().name)
        assert isinstance(msg, Frame)
        return Frame(msg.camera, msg.seq, msg.ts * 10, msg.image)

    work: list[Message] = [frame("a", 0), frame("b", 0), frame("a", 1), frame("b", 1), frame("a", 2)]
    with ThreadPoolExecutor(2) as pool:
        out = list(relay.process(work, handle, pool))
    assert [(m.camera, m.seq, m.ts) for m in out] == [(m.camera, m.seq, m.ts * 10) for m in work]
    assert seen == {"a": [0, 1, 2], "b": [0, 1]}
    assert all(len(names) == 1 for names in threads.values()) and threads["a"] != threads["b"]


def test_without_a_pool_each_output_is_made_when_it_is_asked_for() -> None:
    handled: list[int] = []

    def handle(msg: Message) -> Message:
        handled.append(msg.seq)
        return msg

    outputs = relay.process([frame("a", 0), frame("a", 1)], handle, None)
    assert handled == []
    assert next(outputs).seq == 0 and handled == [0]  # published before the next is processed
    assert [m.seq for m in outputs] == [1] and handled == [0, 1]
