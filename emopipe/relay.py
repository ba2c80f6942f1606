"""The receive → process → publish loop shared by the middle stages (detect, classify).

Every input message gets exactly one output message (so the sink can join every
frame); end-of-stream is forwarded as it arrives, after the frames before it. In
live mode only the newest input per camera is processed, the rest count as stale.

With ``threads`` > 1, the cameras of one received batch are processed in parallel (each
camera's messages in order, by one thread; OpenCV and onnxruntime release the GIL), and
the outputs are published from the loop's own thread in the batch's order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import zmq

from emopipe import bus, messages, service
from emopipe.bus import Publisher, Subscriber, SubscriberTimeoutError
from emopipe.config import Config
from emopipe.messages import EndOfStream, Message, MessageError
from emopipe.metrics import Metrics
from emopipe.throttle import ThrottledLog

log = logging.getLogger(__name__)

Handler = Callable[[Message], Message]


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
    pool = ThreadPoolExecutor(threads, thread_name_prefix=stage) if threads > 1 else None

    def timed(msg: Message) -> Message:
        start = time.perf_counter()
        out = handle(msg)
        metrics.stage_latency.labels(stage=stage, camera=msg.camera).observe(time.perf_counter() - start)
        metrics.frames_processed.labels(stage=stage, camera=msg.camera).inc()
        return out

    try:
        while not stop.is_set():
            raw = sub.receive(timeout_ms=200)
            received = time.time()
            batch = decode_batch(stage, raw, expected, metrics)
            if not pub.lossless:
                batch, stale = bus.keep_newest(batch)
                if stale:
                    metrics.frames_dropped.labels(stage=stage, reason="stale").inc(stale)
            work: list[Message] = [m for m in batch if not isinstance(m, EndOfStream)]
            for job in work:
                metrics.transport_delay.labels(stage=stage, camera=job.camera).observe(max(0.0, received - job.sent))
            outputs = process(work, timed, pool)
            for msg in batch:
                if isinstance(msg, EndOfStream):
                    if msg.camera not in ended:  # capture repeats end-of-stream; log it once
                        log.info("%s: camera %s ended after %d frames", stage, msg.camera, msg.seq)
                        ended.add(msg.camera)
                    pub.send(EndOfStream(camera=msg.camera, seq=msg.seq, ts=msg.ts))
                else:
                    pub.send(next(outputs))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def process(work: Sequence[Message], handle: Handler, pool: ThreadPoolExecutor | None) -> Iterator[Message]:
    """``handle`` each message, outputs in input order: one at a time as they are asked for,
    or, with a pool, all at once, one camera per thread, its messages in order."""
    if pool is None or len({m.camera for m in work}) < 2:
        return (handle(m) for m in work)
    cameras: dict[str, list[int]] = {}
    for i, msg in enumerate(work):
        cameras.setdefault(msg.camera, []).append(i)
    outs: dict[int, Message] = {}

    def camera(indices: list[int]) -> None:
        for i in indices:
            outs[i] = handle(work[i])

    list(pool.map(camera, cameras.values()))  # waits for them; re-raises a handler's exception
    return (outs[i] for i in range(len(work)))


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
