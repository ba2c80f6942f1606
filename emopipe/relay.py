"""The worker loop shared by the middle stages (detect, classify): take work from the
hubs (capture processes, ``services.capture.hub``), answer each message to the hub it
came from.

Every input message gets exactly one answer (so the hub can hand every frame on); the hub
decides what waits and what is dropped (``emopipe.pool``), and handles end-of-stream.

With ``threads`` > 1, cameras are processed in parallel (``Lanes``: each camera's messages
in order, one at a time), and the outputs are published from the loop's own thread as
they are ready.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor

import zmq

from emopipe import bus, curve, messages, service
from emopipe.bus import Subscriber
from emopipe.config import Config
from emopipe.messages import EndOfStream, Message, MessageError
from emopipe.metrics import Metrics
from emopipe.throttle import ThrottledLog

log = logging.getLogger(__name__)

Handler = Callable[[Message], Message]
#: with work on other threads, how often the loop looks for finished work between messages
BUSY_POLL_MS = 2
#: lossless: messages waiting in a stage's lanes, at most, before it reads more
LOSSLESS_WAITING = 8
#: live: messages read per turn of the loop at most (a stage keeps the newest per camera)
READ_LIMIT = 1000


def decode_batch(stage: str, raw: list[list[zmq.Frame]], expected: type, metrics: Metrics) -> list[Message]:
    """Decode received messages; each bad one is logged, named and counted as a drop."""
    decoded: list[Message] = []
    for parts in raw:
        msg = decode_one(stage, parts, expected, metrics)
        if msg is not None:
            decoded.append(msg)
    return decoded


#: bad messages are counted each; their log lines are throttled (a flood does not fill the disk)
bad_messages = ThrottledLog(log)


def decode_one(stage: str, parts: list[zmq.Frame], expected: type, metrics: Metrics) -> Message | None:
    try:
        msg = messages.decode(parts)
    except MessageError as exc:
        topic = bytes(parts[0].buffer) if parts else b""
        bad_messages.event(exc.reason, logging.ERROR, "%s: dropped message %r: %s", stage, topic[:80], exc)
        metrics.frames_dropped.labels(stage=stage, reason=exc.reason).inc()
        return None
    if not isinstance(msg, (expected, EndOfStream)):
        bad_messages.event(
            "unexpected",
            logging.ERROR,
            "%s: dropped %s message for %s: expected %s",
            stage,
            messages.kind_of(msg),
            msg.camera,
            expected.__name__,
        )
        metrics.frames_dropped.labels(stage=stage, reason="malformed").inc()
        return None
    return msg


class Lanes:
    """One lane per camera: its messages handled in order, one at a time; with ``threads`` > 1,
    several cameras at once on a pool (OpenCV and onnxruntime release the GIL), so a slow
    camera does not hold up the others. Live, a frame waiting in a lane is replaced by a newer
    one of its camera (counted stale). End-of-stream leaves its lane after the frames before it."""

    def __init__(
        self, handle: Handler, threads: int, lossless: bool, stage: str = "", background: bool = False
    ) -> None:
        """``background``: handle on a pool thread even with one thread (the caller's loop stays free)."""
        self.handle = handle
        self.lossless = lossless
        pooled = threads > 1 or background
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=stage) if pooled else None
        self.waiting: dict[str, deque[Message]] = {}
        self.running: dict[str, Future[Message]] = {}

    @property
    def busy(self) -> bool:
        return bool(self.running)

    @property
    def full(self) -> bool:
        """Lossless: enough is waiting; the loop stops reading, so back-pressure reaches the publisher."""
        return self.lossless and self._queued() >= LOSSLESS_WAITING

    @property
    def room(self) -> int:
        """How many messages to read now: lossless, what fits under LOSSLESS_WAITING."""
        return max(1, LOSSLESS_WAITING - self._queued()) if self.lossless else READ_LIMIT

    def _queued(self) -> int:
        return sum(map(len, self.waiting.values()))

    def wait(self, timeout_s: float) -> None:
        """Until a running message is done, or ``timeout_s``."""
        futures.wait(list(self.running.values()), timeout=timeout_s, return_when=futures.FIRST_COMPLETED)

    def add(self, msg: Message) -> int:
        """Queue ``msg`` in its camera's lane; returns how many waiting frames it made stale."""
        lane = self.waiting.setdefault(msg.camera, deque())
        stale = 0
        if not self.lossless and not isinstance(msg, EndOfStream):
            stale = sum(not isinstance(m, EndOfStream) for m in lane)
            if stale:
                self.waiting[msg.camera] = lane = deque(m for m in lane if isinstance(m, EndOfStream))
        lane.append(msg)
        return stale

    def step(self) -> Iterator[Message]:
        """The outputs ready now, each camera's in order; starts each idle lane's next message."""
        for camera, lane in self.waiting.items():
            future = self.running.get(camera)
            if future is not None:
                if not future.done():
                    continue
                del self.running[camera]
                yield future.result()  # re-raises the handler's exception
            if self.pool is None:  # all of it, here
                while lane:
                    msg = lane.popleft()
                    yield msg if isinstance(msg, EndOfStream) else self.handle(msg)
                continue
            while lane and isinstance(lane[0], EndOfStream):
                yield lane.popleft()
            if lane:
                self.running[camera] = self.pool.submit(self.handle, lane.popleft())

    def close(self) -> None:
        """Stop the pool; a handler's exception no one collected yet is logged, not lost."""
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        for camera, future in self.running.items():
            if not future.cancelled() and future.exception() is not None:
                log.error("camera %s: the last message failed", camera, exc_info=future.exception())


def run(
    stage: str,
    sub: Subscriber,
    expected: type,
    handle: Handler,
    metrics: Metrics,
    stop: threading.Event,
    threads: int = 1,
    lossless: bool = True,
) -> None:
    """Answer the work the hubs hand this worker until ``stop`` is set: each message's output
    goes back to the hub (the address) it came from."""
    origins: dict[str, int] = {}  # camera -> the address of the capture that owns it

    def timed(msg: Message) -> Message:
        start = time.perf_counter()
        out = handle(msg)
        metrics.stage_latency.labels(stage=stage, camera=msg.camera).observe(time.perf_counter() - start)
        metrics.frames_processed.labels(stage=stage, camera=msg.camera).inc()
        return out

    # the hub bounds what it hands out, so every message is answered: nothing here goes stale;
    # handlers run on pool threads, so this loop heartbeats (bus.LIVENESS_S) however long they take
    lanes = Lanes(timed, threads, lossless=True, stage=stage, background=True)
    try:
        while not stop.is_set():
            if lanes.full:
                lanes.wait(0.2)
                sub.keep_subscribed()
                raw = []
            else:
                raw = sub.receive_from(timeout_ms=BUSY_POLL_MS if lanes.busy else 200, limit=lanes.room)
            received = time.time()
            for origin, parts in raw:
                msg = decode_one(stage, parts, expected, metrics)
                if msg is None or isinstance(msg, EndOfStream):
                    continue
                origins[msg.camera] = origin
                metrics.transport_delay.labels(stage=stage, camera=msg.camera).observe(max(0.0, received - msg.sent))
                lanes.add(msg)
            for out in lanes.step():
                parts = messages.encode(out, sent=time.time())
                if not sub.answer(origins[out.camera], parts, stop if lossless else None) and not stop.is_set():
                    metrics.frames_dropped.labels(stage=stage, reason="hwm").inc()
    finally:
        lanes.close()


def serve(
    stage: str,
    cfg: Config,
    source: tuple[str, str],
    expected: type,
    handle: Handler,
    metrics: Metrics,
    stop: threading.Event,
    threads: int = 1,
) -> int:
    """Run a worker of a middle stage: join the ``stage`` pool of the hub at ``source``
    (endpoint, message kind) for the stage's cameras, answer its work until ``stop``
    (``threads`` cameras at a time); returns the exit code."""
    section = getattr(cfg, stage)
    cameras: Sequence[str] = section.cameras
    hwm = cfg.bus.lossless_hwm if cfg.lossless else cfg.bus.live_hwm
    endpoint, kind = source
    ctx = zmq.Context()
    try:
        with service.starting(stage):
            keys = curve.load(cfg.curve.keys)
            link = "frames" if kind == "frame" else kind
            topics = bus.topics_for([kind], cameras)
            sub = bus.Subscriber(ctx, endpoint, topics, hwm, cfg.bus.max_message_mb, stage, keys, link)
        log.info("%s: a worker of %s's %s pool", stage, endpoint, stage)
        try:
            run(stage, sub, expected, handle, metrics, stop, threads, cfg.lossless)
            return 0
        finally:
            sub.close(linger=0)
    finally:
        ctx.term()
