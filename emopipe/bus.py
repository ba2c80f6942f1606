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

``ZMQ_CONFLATE`` is not used: it breaks multipart messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import zmq

from emopipe import messages
from emopipe.messages import EndOfStream, Message

log = logging.getLogger(__name__)


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
    ) -> None:
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's subscription, not just the first
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
        self._ready: set[bytes] = set()

    def send(self, msg: Message) -> bool:
        """Send one message; False if stopped while waiting for room or subscribers."""
        parts = messages.encode(msg, sent=time.time())
        if not self.wait_subscribed(parts[0]):
            return False
        return self._send_parts(parts)

    def pump_subscriptions(self) -> None:
        """Read the (un)subscription messages the XPUB socket has queued."""
        while True:
            try:
                event = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\x01":
                self.subscriptions[event[1:]] += 1
            elif event[:1] == b"\x00" and self.subscriptions[event[1:]] > 0:
                self.subscriptions[event[1:]] -= 1

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


def subscriber(ctx: zmq.Context, endpoint: str, topics: Iterable[bytes], hwm: int) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, hwm)
    for t in topics:
        sock.setsockopt(zmq.SUBSCRIBE, t)
    for address in addresses(endpoint):
        sock.connect(address)
    return sock


def addresses(endpoint: str) -> list[str]:
    """The addresses of a configured endpoint: one, or several separated by commas."""
    found = [a.strip() for a in endpoint.split(",") if a.strip()]
    if not found:
        raise ValueError(f"endpoint {endpoint!r} names no address")
    return found


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
