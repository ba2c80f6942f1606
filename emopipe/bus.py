"""ZeroMQ socket helpers: publishers bind, subscribers connect.

Two delivery modes, chosen per pipeline (``Config.lossless``):

* lossless (files, analysed completely): the publisher is an XPUB with
  ``XPUB_NODROP``, so a full queue makes sending wait (back-pressure: the pipeline
  slows down) instead of dropping.
* live (cameras, URLs, ``--realtime``): small high-water marks; a full queue drops,
  and the receiving stage keeps only the newest frame per camera (see ``keep_newest``).

An endpoint may list several addresses separated by commas: a publisher binds each,
a subscriber connects to each (fan-in from a stage scaled out over several processes).

In both modes, before a topic's first message the publisher waits until the expected
number of subscribers has subscribed, so nobody misses the start of a stream.

Publishers decide which subscriptions take effect (``ZMQ_XPUB_MANUAL``): only the prefixes a
pipeline subscriber makes (``frame.``, ``frame.cam0.``; see ``topics_for``), and at most
``MAX_SUBSCRIPTIONS`` distinct ones: a peer cannot subscribe to everything (``b""``) and a
flood does not grow this module's table. Each refused one is counted; the log says so at
most once every ``REFUSED_LOG_EVERY_S``. libzmq itself (4.3.5) still keeps every
subscription a peer sent, about 1.4 KB each, until that peer leaves; keeping such peers out
is the endpoints' job (ipc:// in a private directory, CURVE on tcp://).

``ZMQ_CONFLATE`` is not used: it breaks multipart messages.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from emopipe import messages
from emopipe.messages import EndOfStream, Message
from emopipe.throttle import ThrottledLog

if TYPE_CHECKING:
    from prometheus_client.metrics import Counter as CounterChild

log = logging.getLogger(__name__)
#: in an endpoint: the private directory of runtime_dir()
RUNTIME = "{runtime}"
#: what a pipeline subscriber subscribes to: a message kind, or a kind and one camera
WANTED = re.compile(
    "(?:{kinds})\\.(?:{camera}\\.)?".format(kinds="|".join(messages.KINDS), camera=messages.CAMERA_ID.pattern).encode()
)
MAX_SUBSCRIPTIONS = 4096
#: handled per call, so a flood cannot hold up sending
EVENTS_PER_PUMP = 10_000
REFUSED_LOG_EVERY_S = 10.0


class SubscriberTimeoutError(RuntimeError):
    """Lossless mode: the next stage did not subscribe in time."""


class Publisher:
    """An XPUB socket that sends ``messages`` and, in lossless mode, never drops."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        *,
        lossless: bool,
        hwm: int,
        subscribers: int,
        subscribe_timeout_s: float,
        stop: threading.Event,
        refused: CounterChild | None = None,
    ) -> None:
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's subscription, not just the first
        self.sock.setsockopt(zmq.XPUB_MANUAL, 1)  # and none takes effect until pump_subscriptions accepts it
        if lossless:
            self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        for address in addresses(endpoint):
            try:
                self.sock.bind(address)
            except zmq.ZMQError as exc:
                self.sock.close(linger=0)
                raise zmq.ZMQError(exc.errno, f"cannot bind {address}: {exc.strerror}") from exc
        self.endpoint = endpoint
        self.lossless = lossless
        self.subscribers = subscribers
        self.subscribe_timeout_s = subscribe_timeout_s
        self.stop = stop
        self.subscriptions: Counter[bytes] = Counter()
        self._refused_metric = refused
        self._refused_log = ThrottledLog(log, REFUSED_LOG_EVERY_S)
        self._ready: set[bytes] = set()

    def send(self, msg: Message) -> bool:
        """Send one message; False if stopped while waiting for room or subscribers."""
        self.pump_subscriptions()
        parts = messages.encode(msg, sent=time.time())
        if not self.wait_subscribed(parts[0]):
            return False
        return self._send_parts(parts)

    def pump_subscriptions(self) -> None:
        """Read the (un)subscription messages the XPUB socket has queued; accept the ones a
        pipeline subscriber makes, refuse (and count) the rest."""
        for _ in range(EVENTS_PER_PUMP):
            try:
                event = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            prefix = event[1:]
            if event[:1] == b"\x01":
                if WANTED.fullmatch(prefix) and (
                    prefix in self.subscriptions or len(self.subscriptions) < MAX_SUBSCRIPTIONS
                ):
                    self.sock.setsockopt(zmq.SUBSCRIBE, prefix)  # for the peer this event came from
                    self.subscriptions[prefix] += 1
                else:
                    self._refuse(prefix)
            elif event[:1] == b"\x00" and self.subscriptions.get(prefix, 0) > 0:
                # a peer's own unsubscription, or one libzmq makes for a peer that left (then a no-op)
                self.sock.setsockopt(zmq.UNSUBSCRIBE, prefix)
                self.subscriptions[prefix] -= 1
                if not self.subscriptions[prefix]:
                    del self.subscriptions[prefix]
            # anything else (an unsubscription of a refused prefix, a message that is not a
            # subscription) changes nothing

    @property
    def refused(self) -> int:
        return self._refused_log.count

    def _refuse(self, prefix: bytes) -> None:
        if self._refused_metric is not None:
            self._refused_metric.inc()
        self._refused_log.event(
            "subscription",
            logging.WARNING,
            "%s: refused a subscription that no pipeline stage makes (or over %d): %r",
            self.endpoint,
            MAX_SUBSCRIPTIONS,
            prefix[:80],
        )

    def subscriber_count(self, topic: bytes) -> int:
        self.pump_subscriptions()
        return sum(n for prefix, n in self.subscriptions.items() if topic.startswith(prefix))

    def wait_subscribed(self, topic: bytes) -> bool:
        """Before a topic's first message, wait for its subscribers; False if stopped.

        Lossless, a missing subscriber after the timeout is an error; live, a warning
        (the stream goes on: a subscriber that comes later gets the frames from then on).
        """
        if topic in self._ready:
            return True
        deadline = time.monotonic() + self.subscribe_timeout_s
        while self.subscriber_count(topic) < self.subscribers:
            if self.stop.is_set():
                return False
            if time.monotonic() > deadline:
                problem = (
                    f"{self.endpoint}: {self.subscriber_count(topic)} of {self.subscribers} "
                    f"subscribers for {topic!r} after {self.subscribe_timeout_s}s"
                )
                if self.lossless:
                    raise SubscriberTimeoutError(problem)
                log.warning("%s; publishing anyway (live)", problem)
                break
            self.sock.poll(100, zmq.POLLIN)
        self._ready.add(topic)
        return True

    def _send_parts(self, parts: Sequence[Any]) -> bool:
        while not self.stop.is_set():
            try:
                self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:  # lossless and the queue is full: wait for room (back-pressure)
                self.sock.poll(100, zmq.POLLOUT)
                self.pump_subscriptions()
        return False

    def close(self) -> None:
        self.sock.close(linger=0)


def subscriber(
    ctx: zmq.Context, endpoint: str, topics: Iterable[bytes], hwm: int, max_message_mb: int = 64
) -> zmq.Socket:
    """A SUB socket connected to every address of ``endpoint``. libzmq refuses a message part
    over ``max_message_mb`` before it is read, and cuts that publisher off for good (a protocol
    error: no reconnect). The pipeline's own stages never send one: capture drops a bigger frame."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_mb << 20)
    for t in topics:
        sock.setsockopt(zmq.SUBSCRIBE, t)
    for address in addresses(endpoint):
        sock.connect(address)
    return sock


def addresses(endpoint: str) -> list[str]:
    """The addresses of a configured endpoint: one, or several separated by commas;
    ``{runtime}`` stands for ``runtime_dir()``."""
    found = [a.strip() for a in endpoint.split(",") if a.strip()]
    if not found:
        raise ValueError(f"endpoint {endpoint!r} names no address")
    if any(RUNTIME in a for a in found):
        found = [a.replace(RUNTIME, str(runtime_dir())) for a in found]
    return found


def runtime_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the default ipc:// sockets live: ``$XDG_RUNTIME_DIR/emopipe``, else
    ``/tmp/emopipe-<uid>``, made mode 0700 so no other user can connect (inject frames or
    watch them). One that another user owns or others may open is refused, named."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_RUNTIME_DIR", "")
    path = (
        Path(base) / "emopipe"
        if base and Path(base).is_dir()
        else Path(tempfile.gettempdir()) / f"emopipe-{os.getuid()}"
    )
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"{path} must be a directory of user {os.getuid()} with mode 0700 (it is uid {info.st_uid}, "
            f"mode {stat.S_IMODE(info.st_mode):o}): the pipeline's sockets would be open to others"
        )
    return path


def topics_for(kinds: Sequence[str], cameras: Sequence[str]) -> list[bytes]:
    """Subscription prefixes: each kind for the listed cameras, or for all if none."""
    if not cameras:
        return [messages.topic(k) for k in kinds]
    return [messages.topic(k, c) for k in kinds for c in cameras]


def receive(sock: zmq.Socket, timeout_ms: int, limit: int = 1000) -> list[list[zmq.Frame]]:
    """Wait up to ``timeout_ms`` for a message, then take whatever else is queued."""
    batch: list[list[zmq.Frame]] = []
    if not sock.poll(timeout_ms, zmq.POLLIN):
        return batch
    while len(batch) < limit:
        try:
            batch.append(sock.recv_multipart(zmq.NOBLOCK, copy=False))
        except zmq.Again:
            break
    return batch


def keep_newest(batch: Sequence[Message]) -> tuple[list[Message], int]:
    """Live mode: keep only the newest frame per camera; end-of-stream is always kept.

    Returns the kept messages in arrival order and how many stale ones were dropped.
    """
    newest: dict[str, int] = {}
    for i, msg in enumerate(batch):
        if not isinstance(msg, EndOfStream):
            newest[msg.camera] = i
    kept = [m for i, m in enumerate(batch) if isinstance(m, EndOfStream) or newest[m.camera] == i]
    return kept, len(batch) - len(kept)
