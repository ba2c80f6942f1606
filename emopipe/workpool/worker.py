"""A worker of a pool, the workers' side of the work-pool protocol (``protocol.py``): the loop
the middle stages (detect, classify) run. It joins the pool of every capture at its stage's
link, takes units of work, and answers each to the capture it came from.

Every unit gets exactly one answer (the broker decides what waits, what is dropped, what goes to
another worker). Handlers run on a thread pool (``Lanes``: each camera's units in order, one at
a time; ``threads`` cameras at once: OpenCV and onnxruntime release the GIL), so the loop keeps
its heartbeat however long a unit takes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import zmq

from emopipe import bus, curve, messages, service, shm, topology
from emopipe.bus import decode_one
from emopipe.config import Config
from emopipe.curve import Keys
from emopipe.messages import Message
from emopipe.metrics import Metrics
from emopipe.waker import Waker
from emopipe.workpool import protocol

log = logging.getLogger(__name__)

Handler = Callable[[Message], Message]
#: how long a stopping worker gives its LEAVE to go out
LEAVE_LINGER_MS = 200
#: the loop waits this long at most for work or a unit done (stop is checked this often)
IDLE_POLL_MS = 200


class Connection:
    """DEALER sockets, one per address of the pool's endpoint (one per capture), that join the
    pool for ``prefixes``, heartbeat, take WORK and send ANSWERs. libzmq refuses a message part
    over ``max_message_mb`` before it is read."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        pool: str,
        prefixes: Sequence[bytes],
        max_message_mb: int = 64,
        keys: Keys | None = None,
        link: str = "",
        shared: str = "",
    ) -> None:
        """``shared``: this host's shared memory (``emopipe.shm.host_id``), said in JOIN: a broker on
        the same host hands frames there (""; never)."""
        self.pool = pool
        self.prefixes = list(prefixes)
        self.shared = [protocol.SHARED + shared.encode()] if shared else []
        self.addresses = bus.addresses(endpoint)
        hwm = protocol.WORKER_HWM
        self.sockets = bus.connect_dealers(ctx, self.addresses, hwm, hwm, max_message_mb, keys, link)
        self._poller = zmq.Poller()
        for sock in self.sockets:
            self._poller.register(sock, zmq.POLLIN)
        self.waker = Waker()  # set by the handler threads when a unit is done
        self._poller.register(self.waker.fd, zmq.POLLIN)
        self._beat = -float("inf")
        self.joined: set[int] = set()  # the addresses whose broker said READY
        for origin in range(len(self.sockets)):
            self._join(origin)

    def _join(self, origin: int) -> None:
        self._try_send(origin, [protocol.JOIN, self.pool.encode(), *self.prefixes, *self.shared])

    def _try_send(self, origin: int, parts: Sequence[Any]) -> None:
        """A command that may wait to be sent (queued until connected) or, with a full queue, go."""
        try:
            self.sockets[origin].send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:
            log.debug("%s: queue full, %r not sent", self.addresses[origin], parts[0])

    def heartbeat(self) -> None:
        """HEARTBEAT to every broker if HEARTBEAT_S has passed."""
        now = time.monotonic()
        if now - self._beat >= protocol.HEARTBEAT_S:
            self._beat = now
            for origin in range(len(self.sockets)):
                self._try_send(origin, [protocol.HEARTBEAT])

    def receive(self, timeout_ms: int, limit: int) -> list[tuple[int, list[zmq.Frame]]]:
        """Wait up to ``timeout_ms`` for WORK or the waker (a unit done; heartbeating meanwhile),
        then take what is queued: each unit's message parts with the index of the address it came from."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            self.heartbeat()
            left = deadline - time.monotonic()
            step = max(0.0, min(left, protocol.HEARTBEAT_S))
            if self._poller.poll(round(step * 1000)) or left <= step:
                break
        self.waker.clear()  # before the caller looks for done units: one done later wakes the next poll
        batch: list[tuple[int, list[zmq.Frame]]] = []
        for origin, sock in enumerate(self.sockets):
            while len(batch) < limit:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                work = self._control(origin, parts)
                if work is not None:
                    batch.append((origin, work))
        return batch

    def _control(self, origin: int, parts: list[zmq.Frame]) -> list[zmq.Frame] | None:
        """WORK's message parts; READY and REJOIN are handled here (None)."""
        command = parts[0].bytes if parts and len(parts[0]) <= 16 else b""
        if command == protocol.WORK:
            return parts[1:]
        if command == protocol.REJOIN:
            log.info("%s: the broker asks this worker to join again", self.addresses[origin])
            self.joined.discard(origin)
            self._join(origin)
        elif command == protocol.READY:
            if origin not in self.joined:
                log.info("%s: joined the %s pool", self.addresses[origin], self.pool)
            self.joined.add(origin)
        else:
            log.error("%s: dropped a message that is not a command: %r", self.addresses[origin], command[:20])
        return None

    def answer(self, origin: int, parts: Sequence[Any], stop: threading.Event | None = None) -> bool:
        """ANSWER to the broker at address ``origin``. With ``stop`` (lossless) a full queue makes
        it wait, heartbeating; without, a full queue drops it: False."""
        sock = self.sockets[origin]
        while True:
            try:
                sock.send_multipart([protocol.ANSWER, *parts], zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                if stop is None or stop.is_set():
                    return False
                self.heartbeat()
                sock.poll(10, zmq.POLLOUT)

    def leave(self) -> None:
        """LEAVE every broker (this worker's units go to the others at once)."""
        for origin in range(len(self.sockets)):
            self._try_send(origin, [protocol.LEAVE])

    def close(self, linger: int = 0) -> None:
        for sock in self.sockets:
            sock.close(linger=linger)
        self.waker.close()


class Lanes:
    """One lane per camera: its units handled in order, one at a time, on a thread pool of
    ``threads``, so a slow camera does not hold up the others."""

    def __init__(self, handle: Handler, threads: int, stage: str = "", waker: Waker | None = None) -> None:
        """``waker``: set each time a unit is done (the loop waiting on it answers at once)."""
        self.handle = handle
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=stage)
        self.waker = waker
        self.waiting: dict[str, deque[Message]] = {}
        self.running: dict[str, Future[Message]] = {}

    @property
    def room(self) -> int:
        """How many units to read now: what fits under WORKER_WAITING (0: enough waits, the
        loop stops reading, so back-pressure reaches the broker)."""
        return max(0, protocol.WORKER_WAITING - sum(map(len, self.waiting.values())))

    def wait(self, timeout_s: float) -> None:
        """Until a running unit is done, or ``timeout_s``."""
        futures.wait(list(self.running.values()), timeout=timeout_s, return_when=futures.FIRST_COMPLETED)

    def add(self, msg: Message) -> None:
        self.waiting.setdefault(msg.camera, deque()).append(msg)

    def step(self) -> Iterator[Message]:
        """The outputs ready now, each camera's in order; starts each idle lane's next unit."""
        for camera, lane in self.waiting.items():
            future = self.running.get(camera)
            if future is not None:
                if not future.done():
                    continue
                del self.running[camera]
                yield future.result()  # re-raises the handler's exception
            if lane:
                self.running[camera] = future = self.pool.submit(self.handle, lane.popleft())
                if (waker := self.waker) is not None:
                    future.add_done_callback(lambda _: waker.set())

    def close(self) -> None:
        """Stop the pool; a handler's exception no one collected yet is logged, not lost."""
        self.pool.shutdown(cancel_futures=True)
        for camera, future in self.running.items():
            if not future.cancelled() and future.exception() is not None:
                log.error("camera %s: the last unit failed", camera, exc_info=future.exception())


def run(
    stage: str,
    conn: Connection,
    expected: type,
    handle: Handler,
    metrics: Metrics,
    stop: threading.Event,
    threads: int = 1,
    lossless: bool = True,
) -> None:
    """Answer the units the brokers hand this worker until ``stop`` is set: each to the broker
    (the address) it came from. Live, an answer that finds the queue full is dropped (counted)."""
    origins: dict[str, int] = {}  # camera -> the address of the capture that owns it

    def timed(msg: Message) -> Message:
        start = time.perf_counter()
        out = handle(msg)
        metrics.stage_latency.labels(stage=stage, camera=msg.camera).observe(time.perf_counter() - start)
        metrics.frames_processed.labels(stage=stage, camera=msg.camera).inc()
        return out

    lanes = Lanes(timed, threads, stage, conn.waker)
    try:
        while not stop.is_set():
            room = lanes.room
            if room == 0:
                lanes.wait(0.2)
                conn.heartbeat()
                raw = []
            else:
                raw = conn.receive(IDLE_POLL_MS, room)  # a unit done wakes it (the waker)
            received = time.time()
            for origin, parts in raw:
                msg = decode_one(stage, parts, expected, metrics, eos=False)
                if msg is None:
                    continue
                origins[msg.camera] = origin
                metrics.transport_delay.labels(stage=stage, camera=msg.camera).observe(max(0.0, received - msg.sent))
                lanes.add(msg)
            for out in lanes.step():
                parts = messages.encode(out, sent=time.time())
                if not conn.answer(origins[out.camera], parts, stop if lossless else None) and not stop.is_set():
                    metrics.frames_dropped.labels(stage=stage, reason="hwm").inc()
    finally:
        lanes.close()


def serve(stage: str, cfg: Config, handle: Handler, metrics: Metrics, stop: threading.Event, threads: int = 1) -> int:
    """Run a worker of the pool ``stage`` (a row of ``emopipe.topology``): join the pool at the
    stage's link for its cameras and answer its work until ``stop``; returns the exit code."""
    row = topology.stage(stage)
    assert row.takes is not None and row.pooled, f"{stage} is not a pool"
    endpoint = getattr(cfg.endpoints, row.takes.name)
    prefixes = bus.topics_for([row.takes.kind], getattr(cfg, stage).cameras)
    shared = shm.host_id() if cfg.bus.shared_memory and row.takes.kind == "frame" else ""
    ctx = zmq.Context()
    try:
        with service.starting(stage):
            keys = curve.load(cfg.curve.keys)
            conn = Connection(ctx, endpoint, stage, prefixes, cfg.bus.max_message_mb, keys, row.takes.name, shared)
        log.info("%s: a worker of the %s pool at %s", stage, stage, endpoint)
        try:
            run(stage, conn, messages.TYPES[row.takes.kind], handle, metrics, stop, threads, cfg.lossless)
            return 0
        finally:
            conn.leave()
            conn.close(linger=LEAVE_LINGER_MS)
    finally:
        ctx.term()
