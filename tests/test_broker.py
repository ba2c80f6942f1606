"""A pool's broker on real sockets: who gets which work, what happens when workers join, leave,
fall silent or come back, and what it refuses (emopipe/workpool/protocol.py)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from emopipe import messages, topology
from emopipe.messages import Frame
from emopipe.workpool import protocol
from emopipe.workpool.broker import Answer, Broker
from emopipe.workpool.protocol import LIVENESS_S, MAX_ATTEMPTS
from helpers import HandWorker, wait_for

DETECT = topology.stage("detect")  # sticky
STATELESS = dataclasses.replace(DETECT, policy=topology.LEAST_BUSY)


def frame(camera: str, seq: int) -> list[object]:
    return messages.encode(Frame(camera, seq, float(seq), np.zeros((4, 4, 3), np.uint8)), sent=time.time())


@pytest.fixture
def endpoint(ipc_dir: Path) -> str:
    return f"ipc://{ipc_dir}/frames"


@pytest.fixture
def brokers(zmq_ctx: zmq.Context, endpoint: str) -> Iterator[list[Broker]]:
    made: list[Broker] = []
    yield made
    for broker in made:
        broker.close()


def make(
    ctx: zmq.Context, endpoint: str, made: list[Broker], stage: topology.Stage = DETECT, lossless: bool = True
) -> Broker:
    made.append(Broker(ctx, endpoint, stage, lossless))
    return made[-1]


def run(pool: Broker, workers: list[HandWorker], seconds: float) -> list[Answer]:
    """Pump the pool while the workers take what they are handed."""
    answers: list[Answer] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answers.extend(pool.pump())
        for worker in workers:
            worker.take(5)
    return answers


def joined(pool: Broker, count: int) -> bool:
    return wait_for(lambda: (list(pool.pump()), len(pool.workers()) == count)[1], 5)


def test_a_worker_that_leaves_hands_its_units_to_another_at_once(
    zmq_ctx: zmq.Context, endpoint: str, brokers: list[Broker]
) -> None:
    """LEAVE (a worker that stops) moves its units without waiting LIVENESS_S for silence."""
    pool = make(zmq_ctx, endpoint, brokers)
    leaving, heir = HandWorker(zmq_ctx, endpoint, "detect", [b"frame.a."]), HandWorker(zmq_ctx, endpoint)
    assert joined(pool, 2)
    pool.submit("a", 0, frame("a", 0))
    run(pool, [leaving], 0.2)
    assert leaving.got == [("a", 0)]
    left = time.monotonic()
    leaving.conn.leave()
    assert wait_for(lambda: (run(pool, [heir], 0.02), heir.got == [("a", 0)])[1], 5)
    assert time.monotonic() - left < LIVENESS_S / 2 and pool.counts["workers_lost"] == 1
    leaving.close()
    heir.close()


def test_a_restarted_broker_asks_its_workers_to_join_again_and_hands_them_work(
    zmq_ctx: zmq.Context, endpoint: str, brokers: list[Broker]
) -> None:
    pool = make(zmq_ctx, endpoint, brokers)
    worker = HandWorker(zmq_ctx, endpoint)
    assert joined(pool, 1)
    assert wait_for(lambda: (worker.take(10), worker.conn.joined == {0})[1], 5)  # READY came
    pool.close()
    brokers.remove(pool)
    again = make(zmq_ctx, endpoint, brokers)  # knows no worker: the next HEARTBEAT gets REJOIN
    again.submit("a", 0, frame("a", 0))
    assert wait_for(lambda: (run(again, [worker], 0.05), worker.got == [("a", 0)])[1], 5)
    worker.close()


def test_a_sticky_pool_spreads_cameras_evenly_and_keeps_each_camera_on_one_worker(
    zmq_ctx: zmq.Context, endpoint: str, brokers: list[Broker]
) -> None:
    pool = make(zmq_ctx, endpoint, brokers)
    workers = [HandWorker(zmq_ctx, endpoint), HandWorker(zmq_ctx, endpoint)]
    assert joined(pool, 2)
    for seq in range(3):
        for camera in ("a", "b", "c", "d"):
            pool.submit(camera, seq, frame(camera, seq))
    run(pool, workers, 0.5)
    cameras = [sorted({c for c, _ in w.got}) for w in workers]
    assert sorted(len(c) for c in cameras) == [2, 2] and set(cameras[0]).isdisjoint(cameras[1])
    for worker in workers:  # every frame once, each camera's in order
        assert worker.got == sorted(worker.got, key=lambda item: (item[1], item[0])) and len(worker.got) == 6
        worker.close()


def test_a_worker_that_joins_is_given_a_camera_of_the_busiest_worker(
    zmq_ctx: zmq.Context, endpoint: str, brokers: list[Broker]
) -> None:
    pool = make(zmq_ctx, endpoint, brokers)
    first = HandWorker(zmq_ctx, endpoint)
    assert joined(pool, 1)
    pool.submit("a", 0, frame("a", 0))
    pool.submit("b", 0, frame("b", 0))
    run(pool, [first], 0.3)
    assert sorted(first.got) == [("a", 0), ("b", 0)]
    second = HandWorker(zmq_ctx, endpoint)
    assert joined(pool, 2)
    pool.submit("a", 1, frame("a", 1))
    pool.submit("b", 1, frame("b", 1))
    run(pool, [first, second], 0.3)
    assert len(second.got) == 1 and second.got[0][1] == 1  # one camera moved; the other stayed
    assert pool.counts["moved"] == 1
    first.close()
    second.close()


def test_the_work_of_a_worker_that_leaves_goes_to_another_in_order_and_its_late_answers_are_ignored(
    zmq_ctx: zmq.Context, endpoint: str, brokers: list[Broker]
) -> None:
    pool = make(zmq_ctx, endpoint, brokers)
    dying = HandWorker(zmq_ctx, endpoint)
    assert joined(pool, 1)
    for seq in range(3):
        pool.submit("a", seq, frame("a", seq))
    run(pool, [dying], 0.3)
    assert dying.got == [("a", 0), ("a", 1), ("a", 2)]
    dying.answer("a", 0)
    dying.close()  # leaves without answering 1 and 2
    heir = HandWorker(zmq_ctx, endpoint)
    started = time.monotonic()
    answers = []
    while len(heir.got) < 2 and time.monotonic() - started < 5:
        answers.extend(run(pool, [heir], 0.05))
    assert heir.got == [("a", 1), ("a", 2)]
    assert time.monotonic() - started < LIVENESS_S + 1.0
    assert [(a.msg.camera, a.msg.seq) for a in answers] == [("a", 0)]
    assert pool.counts["workers_lost"] == 1


def test_a_stateless_pool_hands_work_to_the_least_busy_worker(
    zmq_ctx: zmq.Context, endpoint: str, brokers: list[Broker]
) -> None:
    pool = make(zmq_ctx, endpoint, brokers, STATELESS)
    stuck, quick = HandWorker(zmq_ctx, endpoint), HandWorker(zmq_ctx, endpoint)
    assert joined(pool, 2)
    answers: list[Answer] = []
    for seq in range(10):
        pool.submit("a", seq, frame("a", seq))
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline and len(answers) + len(stuck.got) < seq + 1:
            answers.extend(pool.pump())
            stuck.take(5)
            for camera, got in quick.take(5):
                quick.answer(camera, got)
    assert len(stuck.got) == 1  # the first; then the other always had less in flight
    assert sorted(a.msg.seq for a in answers) == sorted(set(range(10)) - {s for _, s in stuck.got})
    stuck.close()
    quick.close()


def test_live_a_camera_keeps_only_its_newest_waiting_unit_and_the_rest_count_as_stale(
    zmq_ctx: zmq.Context, endpoint: str, brokers: list[Broker]
) -> None:
    pool = make(zmq_ctx, endpoint, brokers, lossless=False)
    for seq in range(3):  # no worker: it all waits
        pool.submit("a", seq, frame("a", seq))
    given = pool.take_given_up()
    assert [(g.work.seq, g.reason) for g in given] == [(0, "stale"), (1, "stale")]
    assert [w.seq for w in pool.waiting["a"]] == [2] and not pool.inflight  # one unit of a's left, waiting


def test_a_worker_takes_only_the_cameras_it_subscribes_to(
    zmq_ctx: zmq.Context, endpoint: str, brokers: list[Broker]
) -> None:
    pool = make(zmq_ctx, endpoint, brokers)
    only_b = HandWorker(zmq_ctx, endpoint, "detect", [messages.topic("frame", "b")])
    assert joined(pool, 1)
    pool.submit("a", 0, frame("a", 0))
    pool.submit("b", 0, frame("b", 0))
    run(pool, [only_b], 0.3)
    assert only_b.got == [("b", 0)] and [w.seq for w in pool.waiting["a"]] == [0]
    only_b.close()


def test_a_late_answer_of_a_worker_taken_for_gone_counts_if_the_unit_is_still_open(
    zmq_ctx: zmq.Context, endpoint: str, brokers: list[Broker]
) -> None:
    pool = make(zmq_ctx, endpoint, brokers)
    slow = HandWorker(zmq_ctx, endpoint)
    assert joined(pool, 1)
    pool.submit("a", 0, frame("a", 0))
    run(pool, [slow], 0.2)
    assert slow.got == [("a", 0)]
    run(pool, [], LIVENESS_S + 0.3)  # it does not poll, so it sends no heartbeat: taken for gone
    assert [w.seq for w in pool.waiting["a"]] == [0] and pool.counts["workers_lost"] == 1
    slow.answer("a", 0)  # it was only slow
    answers = run(pool, [], 0.3)
    assert [(a.msg.camera, a.msg.seq) for a in answers] == [("a", 0)] and not pool.waiting["a"]
    slow.close()


def test_a_unit_handed_out_max_attempts_times_without_an_answer_is_given_up_as_failed(
    zmq_ctx: zmq.Context, endpoint: str, brokers: list[Broker]
) -> None:
    pool = make(zmq_ctx, endpoint, brokers)
    pool.submit("a", 0, frame("a", 0))
    for _ in range(MAX_ATTEMPTS):
        doomed = HandWorker(zmq_ctx, endpoint)
        assert wait_for(lambda: (run(pool, [doomed], 0.05), bool(doomed.got))[1], 5)  # noqa: B023
        doomed.close()  # dies with it
        assert wait_for(lambda: (list(pool.pump()), not pool.workers())[1], 5)
        list(pool.pump())
    assert [(g.work.seq, g.reason) for g in pool.take_given_up()] == [(0, "failed")]
    assert not pool.waiting["a"] and pool.counts["workers_lost"] == MAX_ATTEMPTS


def test_a_worker_taken_for_gone_again_and_again_that_comes_back_keeps_the_unit_lossless(
    zmq_ctx: zmq.Context, endpoint: str, brokers: list[Broker]
) -> None:
    """A starved worker whose heartbeats pause is the same worker each time it comes back:
    its pauses are not tries that failed (each would once have counted, and the unit been given up)."""
    pool = make(zmq_ctx, endpoint, brokers)
    slow = HandWorker(zmq_ctx, endpoint)
    assert joined(pool, 1)
    pool.submit("a", 0, frame("a", 0))
    for pause in range(MAX_ATTEMPTS + 1):
        assert wait_for(lambda: (run(pool, [slow], 0.05), len(slow.got) == pause + 1)[1], 5)  # noqa: B023
        run(pool, [], LIVENESS_S + 0.3)  # no heartbeat: taken for gone, the unit back in the queue
        assert pool.counts["workers_lost"] == pause + 1 and [w.seq for w in pool.waiting["a"]] == [0]
    assert wait_for(lambda: (run(pool, [slow], 0.05), len(slow.got) == MAX_ATTEMPTS + 2)[1], 5)
    slow.answer("a", 0)
    answers = run(pool, [], 0.3)
    assert [(a.msg.camera, a.msg.seq) for a in answers] == [("a", 0)]
    assert pool.take_given_up() == [] and slow.got == [("a", 0)] * (MAX_ATTEMPTS + 2)
    slow.close()


def test_a_stateless_pool_takes_turns_between_cameras(
    zmq_ctx: zmq.Context, endpoint: str, brokers: list[Broker]
) -> None:
    pool = make(zmq_ctx, endpoint, brokers, STATELESS)
    for seq in range(3):
        pool.submit("a", seq, frame("a", seq))
        pool.submit("b", seq, frame("b", seq))
    worker = HandWorker(zmq_ctx, endpoint)
    assert joined(pool, 1)
    deadline = time.monotonic() + 5
    while len(worker.got) < 6 and time.monotonic() < deadline:
        list(pool.pump())
        for camera, seq in worker.take(5):
            worker.answer(camera, seq)
    assert [c for c, _ in worker.got] == ["a", "b", "a", "b", "a", "b"]
    worker.close()


def test_a_broker_refuses_workers_of_another_pool_and_messages_that_are_not_commands(
    zmq_ctx: zmq.Context, endpoint: str, brokers: list[Broker]
) -> None:
    pool = make(zmq_ctx, endpoint, brokers)
    stranger = HandWorker(zmq_ctx, endpoint, "classify", [b"faces."])
    wrong_kind = HandWorker(zmq_ctx, endpoint, "detect", [b"faces."])
    peer = zmq_ctx.socket(zmq.DEALER)
    peer.connect(endpoint)
    peer.send_multipart([b"SUBSCRIBE", b"frame."])  # the fan-out's message, not a command
    peer.send_multipart([protocol.ANSWER, *frame("a", 0)])  # an answer from a worker that never joined
    assert wait_for(lambda: pool.read() >= 0 and pool.refused == 4, 5), pool.refused
    assert pool.workers() == []
    peer.close(linger=0)
    stranger.close()
    wrong_kind.close()


def test_a_joining_worker_gets_a_camera_even_when_an_idler_one_takes_none_of_the_busiest(
    zmq_ctx: zmq.Context, endpoint: str, brokers: list[Broker]
) -> None:
    pool = make(zmq_ctx, endpoint, brokers)
    first = HandWorker(zmq_ctx, endpoint)
    assert joined(pool, 1)
    for camera in "abcd":
        pool.submit(camera, 0, frame(camera, 0))
    run(pool, [first], 0.3)
    only_z = HandWorker(zmq_ctx, endpoint, "detect", [messages.topic("frame", "z")])  # idle, but takes none of a..d
    assert joined(pool, 2)
    third = HandWorker(zmq_ctx, endpoint)
    assert joined(pool, 3)
    for camera in "abcd":
        pool.submit(camera, 1, frame(camera, 1))
    run(pool, [first, only_z, third], 0.3)
    assert only_z.got == [] and len(third.got) >= 1 and pool.counts["moved"] >= 1
    for worker in (first, only_z, third):
        worker.close()
