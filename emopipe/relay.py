"""The receive → process → publish loop shared by the middle stages (detect, classify).

Every input message gets exactly one output message (so the sink can join every
frame); end-of-stream is forwarded as it arrives, after the frames before it. In
live mode only the newest input per camera is processed, the rest count as stale.

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

from emopipe import bus, messages, service
from emopipe.bus import Publisher, Subscriber, SubscriberTimeoutError
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

    def __init__(self, handle: Handler, threads: int, lossless: bool, stage: str = "") -> None:
        self.handle = handle
        self.lossless = lossless
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=stage) if threads > 1 else None
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
    pub: Publisher,
    expected: type,
    handle: Handler,
    metrics: Metrics,
    stop: threading.Event,
    threads: int = 1,
) -> None:
    """Process messages until ``stop`` is set."""
    ended: set[str] = set()

    def timed(msg: Message) -> Message:
        start = time.perf_counter()
        out = handle(msg)
        metrics.stage_latency.labels(stage=stage, camera=msg.camera).observe(time.perf_counter() - start)
        metrics.frames_processed.labels(stage=stage, camera=msg.camera).inc()
        return out

    lanes = Lanes(timed, threads, pub.lossless, stage)
    try:
        while not stop.is_set():
            if lanes.full:
                lanes.wait(0.2)
                raw = []
            else:
                raw = sub.receive(timeout_ms=BUSY_POLL_MS if lanes.busy else 200, limit=lanes.room)
            received = time.time()
            stale = 0
            for msg in decode_batch(stage, raw, expected, metrics):
                if not isinstance(msg, EndOfStream):
                    metrics.transport_delay.labels(stage=stage, camera=msg.camera).observe(
                        max(0.0, received - msg.sent)
                    )
                stale += lanes.add(msg)
            if stale:
                metrics.frames_dropped.labels(stage=stage, reason="stale").inc(stale)
            for out in lanes.step():
                if isinstance(out, EndOfStream):
                    if out.camera not in ended:  # capture repeats end-of-stream; log it once
                        log.info("%s: camera %s ended after %d frames", stage, out.camera, out.seq)
                        ended.add(out.camera)
                    out = EndOfStream(camera=out.camera, seq=out.seq, ts=out.ts)
                pub.send(out)
    finally:
        lanes.close()


def serve(
    stage: str,
    cfg: Config,
    source: tuple[str, str],
    target: str,
    expected: type,
    handle: Handler,
    metrics: Metrics,
    stop: threading.Event,
    threads: int = 1,
) -> int:
    """Run a middle stage: subscribe to ``source`` (endpoint, message kind) for the stage's
    cameras, publish on ``target``, process until ``stop`` (``threads`` cameras at a time);
    returns the exit code."""
    section = getattr(cfg, stage)
    cameras: Sequence[str] = section.cameras
    hwm = cfg.bus.lossless_hwm if cfg.lossless else cfg.bus.live_hwm
    endpoint, kind = source
    ctx = zmq.Context()
    with service.starting(stage):  # bound first: a failed bind leaves no socket open
        pub = Publisher(
            ctx,
            target,
            lossless=cfg.lossless,
            hwm=hwm,
            subscribers=section.subscribers,
            subscribe_timeout_s=cfg.bus.subscribe_timeout_s,
            stop=stop,
            refused=metrics.subscriptions_refused.labels(stage=stage),
            dropped=metrics.frames_dropped.labels(stage=stage, reason="hwm"),
        )
    sub = bus.Subscriber(ctx, endpoint, bus.topics_for([kind, "eos"], cameras), hwm, cfg.bus.max_message_mb)
    log.info("%s: %s messages from %s -> %s", stage, kind, endpoint, target)
    try:
        run(stage, sub, pub, expected, handle, metrics, stop, threads)
        return 0
    except SubscriberTimeoutError as exc:
        log.error("%s", exc)
        return 1
    finally:
        sub.close(linger=0)
        pub.close()
        ctx.term()
