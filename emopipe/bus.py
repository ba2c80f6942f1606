"""The bus's fan-out: publishers bind, subscribers connect (the sink takes each camera's
results this way). Handing work to pools of workers is another protocol:
``emopipe/workpool/protocol.py``.

A publisher is a ROUTER socket and each subscriber a DEALER (one per address), not
PUB/SUB: subscriptions travel as application messages (``[SUBSCRIBE, prefix, ...]``, the
subscriber's whole set, repeated every ``RESUBSCRIBE_S`` so that a restarted publisher
learns them again), so the publisher decides what it keeps. With XPUB, libzmq (4.3.5)
kept every subscription a peer sent, about 1.4 KB each, until that peer left: 300,000
random ones grew capture by 450 MB. Here a peer has at most ``MAX_TOPICS_PER_PEER``
prefixes, each one a pipeline stage makes (``results.``, ``results.cam0.``; see
``topics_for``), and there are at most ``MAX_PEERS`` peers; anything else is refused,
counted, and logged at most once every ``REFUSED_LOG_EVERY_S``. A SUB or XSUB peer cannot
connect at all (libzmq refuses the socket type in the handshake).

Two delivery modes, chosen per pipeline (``Config.lossless``):

* lossless (files, analysed completely): a full queue to a subscriber makes sending
  wait (back-pressure: the pipeline slows down) instead of dropping;
* live (cameras, URLs, ``--realtime``): small high-water marks; a full queue drops the
  message for that subscriber, counted (``reason="hwm"``).

The publisher learns that a subscriber left when a send to it fails
(``ZMQ_ROUTER_MANDATORY``: ``EHOSTUNREACH``); a restarted publisher learns its
subscribers again within ``RESUBSCRIBE_S``.

An endpoint may list several addresses separated by commas: a publisher binds each,
a subscriber connects to each (fan-in from several capture processes).

Lossless, before a topic's first message the publisher waits until the expected number
of subscribers has subscribed, so nobody misses the start of a stream.

``ZMQ_CONFLATE`` is not used: it breaks multipart messages.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from emopipe import messages
from emopipe.curve import Keys
from emopipe.messages import EndOfStream, Message, MessageError
from emopipe.throttle import ThrottledLog

if TYPE_CHECKING:
    from prometheus_client.metrics import Counter as CounterChild

    from emopipe.metrics import Metrics

log = logging.getLogger(__name__)
#: in an endpoint: the private directory of runtime_dir()
RUNTIME = "{runtime}"
#: what a pipeline subscriber subscribes to: a message kind, or a kind and one camera
WANTED = re.compile(
    "(?:{kinds})\\.(?:{camera}\\.)?".format(kinds="|".join(messages.KINDS), camera=messages.CAMERA_ID.pattern).encode()
)
#: the first part of a subscriber's message to its publisher
SUBSCRIBE = b"SUBSCRIBE"
#: a subscriber repeats its subscriptions this often (a restarted publisher learns them again)
RESUBSCRIBE_S = 0.25
MAX_PEERS = 128
MAX_TOPICS_PER_PEER = 512
#: with MAX_PEERS peers, one that has not resubscribed for this long makes room for a new one
STALE_PEER_S = 5.0
#: what a publisher accepts from a peer: subscriptions are small
MAX_INCOMING_BYTES = 64 << 10
#: handled per call, so a flood cannot hold up sending
EVENTS_PER_PUMP = 10_000
REFUSED_LOG_EVERY_S = 10.0


class SubscriberTimeoutError(RuntimeError):
    """Lossless mode: the next stage did not subscribe in time."""


@dataclass
class Peer:
    prefixes: tuple[bytes, ...]
    seen: float  # monotonic time of its latest subscription message

    def wants(self, topic: bytes) -> bool:
        return any(topic.startswith(p) for p in self.prefixes)


class Publisher:
    """A ROUTER socket that sends ``messages`` to the peers subscribed to their topic and,
    in lossless mode, never drops."""

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
        dropped: CounterChild | None = None,
        keys: Keys | None = None,
        link: str = "",
    ) -> None:
        self.sock = bind_router(ctx, endpoint, hwm, MAX_INCOMING_BYTES, keys, link)
        self.endpoint = endpoint
        self.lossless = lossless
        self.subscribers = subscribers
        self.subscribe_timeout_s = subscribe_timeout_s
        self.stop = stop
        self.peers: dict[bytes, Peer] = {}
        self._refused_metric = refused
        self._dropped_metric = dropped
        self._refused_log = ThrottledLog(log, REFUSED_LOG_EVERY_S)
        self._dropped_log = ThrottledLog(log, REFUSED_LOG_EVERY_S)
        self._ready: set[bytes] = set()

    @property
    def subscriptions(self) -> Counter[bytes]:
        """How many peers hold each accepted prefix."""
        return Counter(p for peer in self.peers.values() for p in peer.prefixes)

    @property
    def refused(self) -> int:
        return self._refused_log.count

    @property
    def dropped(self) -> int:
        """Live: messages dropped for a subscriber whose queue was full."""
        return self._dropped_log.count

    def send(self, msg: Message) -> bool:
        """Send one message; False if stopped while waiting for room or subscribers."""
        return self.send_parts(messages.encode(msg, sent=time.time()))

    def send_parts(self, parts: Sequence[Any]) -> bool:
        """Send an encoded message (the first part its topic) as ``send`` does."""
        self.pump_subscriptions()
        topic = bytes(parts[0])
        if not self.wait_subscribed(topic):
            return False
        return self._send_parts(topic, parts)

    def pump_subscriptions(self) -> None:
        """Read what peers sent: a pipeline subscriber's subscriptions are kept (replacing
        that peer's earlier ones); anything else is refused and counted."""
        for _ in range(EVENTS_PER_PUMP):
            if not int(self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:  # cheaper than a recv raising Again
                break
            parts = self.sock.recv_multipart(zmq.NOBLOCK)
            identity, body = parts[0], parts[1:]
            if body and body[0] == SUBSCRIBE:
                self._subscribe(identity, body[1:])
            else:
                self.refuse(identity, b"|".join(body)[:80], "a message that is not a subscription")

    def _subscribe(self, identity: bytes, prefixes: list[bytes]) -> None:
        wanted: list[bytes] = []
        bad: list[bytes] = []
        for prefix in prefixes:
            (wanted if WANTED.fullmatch(prefix) else bad).append(prefix)
        if bad:
            self.refuse(identity, bad[0], "a subscription that no pipeline stage makes", len(bad))
        kept = tuple(dict.fromkeys(wanted))
        if len(kept) > MAX_TOPICS_PER_PEER:
            over = kept[MAX_TOPICS_PER_PEER:]
            self.refuse(identity, over[0], f"over {MAX_TOPICS_PER_PEER} subscriptions of one peer", len(over))
            kept = kept[:MAX_TOPICS_PER_PEER]
        if not kept:  # nothing (left) to send it
            self.peers.pop(identity, None)
            return
        now = time.monotonic()
        if identity not in self.peers and len(self.peers) >= MAX_PEERS and not self._forget_stalest(now):
            self.refuse(identity, b"", f"a peer over {MAX_PEERS}")
            return
        self.peers[identity] = Peer(kept, now)

    def _forget_stalest(self, now: float) -> bool:
        identity, peer = min(self.peers.items(), key=lambda item: item[1].seen)
        if now - peer.seen < STALE_PEER_S:
            return False
        del self.peers[identity]
        return True

    def refuse(self, identity: bytes, what: bytes, why: str, count: int = 1) -> None:
        if self._refused_metric is not None:
            self._refused_metric.inc(count)
        self._refused_log.event(
            "subscription",
            logging.WARNING,
            "%s: refused %s from peer %s: %r",
            self.endpoint,
            why,
            identity.hex(),
            what[:80],
            count=count,
        )

    def subscriber_count(self, topic: bytes) -> int:
        self.pump_subscriptions()
        return sum(1 for peer in self.peers.values() if peer.wants(topic))

    def send_to(self, identity: bytes, parts: Sequence[Any]) -> bool | None:
        """Hand an encoded message to one peer: True if sent, False if its queue is full,
        None if it left (then it is forgotten)."""
        sent = send_to(self.sock, identity, parts)
        if sent is None:
            self._left(identity)
        return sent

    def wait_subscribed(self, topic: bytes) -> bool:
        """Lossless, before a topic's first message, wait for its subscribers (a missing one
        after the timeout is an error); False if stopped. Live, never: a subscriber gets the
        messages from when it subscribes (a restarted stage must not wait for a sink that
        takes no frames while nothing shows them)."""
        if topic in self._ready or not self.lossless:
            return True
        deadline = time.monotonic() + self.subscribe_timeout_s
        while self.subscriber_count(topic) < self.subscribers:
            if self.stop.is_set():
                return False
            if time.monotonic() > deadline:
                raise SubscriberTimeoutError(
                    f"{self.endpoint}: {self.subscriber_count(topic)} of {self.subscribers} "
                    f"subscribers for {topic!r} after {self.subscribe_timeout_s}s"
                )
            self.sock.poll(100, zmq.POLLIN)
        self._ready.add(topic)
        return True

    def _send_parts(self, topic: bytes, parts: Sequence[Any]) -> bool:
        """To every peer that wants ``topic``: live, a full queue drops (counted); lossless,
        it waits for room (back-pressure), and if a subscriber left, for its successor (who
        gets the message too). False if stopped while waiting."""
        done: set[bytes] = set()
        while True:
            full = []
            wanting = [i for i, p in self.peers.items() if p.wants(topic) and i not in done]
            for identity in wanting:
                sent = self.send_to(identity, parts)
                if sent:
                    done.add(identity)
                elif sent is False:
                    full.append(identity)
            if not self.lossless:
                self._drop(topic, len(full))
                return True
            if topic not in self._ready:  # a subscriber left
                if not self.wait_subscribed(topic):
                    return False
            elif not full:
                return True
            elif self.stop.is_set():
                return False
            else:
                self.sock.poll(10, zmq.POLLIN)  # room comes as the peer reads; meanwhile, its subscriptions
                self.pump_subscriptions()

    def _left(self, identity: bytes) -> None:
        """A peer that left is forgotten. Lossless, its topics wait for their subscribers again
        before the next message, rather than going to nobody until its successor subscribes."""
        peer = self.peers.pop(identity, None)
        if peer is None or not self.lossless:
            return
        again = {t for t in self._ready if peer.wants(t)}
        if again:
            log.warning(
                "%s: subscriber %s left; waiting for subscribers of %s again",
                self.endpoint,
                identity.hex(),
                sorted(again),
            )
            self._ready -= again

    def _drop(self, topic: bytes, count: int) -> None:
        if not count:
            return
        if self._dropped_metric is not None:
            self._dropped_metric.inc(count)
        self._dropped_log.event(
            "hwm",
            logging.WARNING,
            "%s: a subscriber's queue is full (bus.live_hwm): dropped %r for it",
            self.endpoint,
            topic[:80],
            count=count,
        )

    def close(self) -> None:
        self.sock.close(linger=0)


class Subscriber:
    """DEALER sockets, one per address of ``endpoint``, that subscribe to ``topics`` and
    receive the messages published on them. libzmq refuses a message part over
    ``max_message_mb`` before it is read, and cuts that publisher off for good (a protocol
    error: no reconnect). The pipeline's own stages never send one: capture drops a bigger frame."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        topics: Iterable[bytes],
        hwm: int,
        max_message_mb: int = 64,
        keys: Keys | None = None,
        link: str = "",
    ) -> None:
        self.topics = list(topics)
        self.addresses = addresses(endpoint)
        # subscriptions wait to connect (two at most)
        self.sockets = connect_dealers(ctx, self.addresses, hwm, 2, max_message_mb, keys, link)
        self._poller = zmq.Poller()
        for sock in self.sockets:
            self._poller.register(sock, zmq.POLLIN)
        self._subscribed = -float("inf")
        self.subscribe()

    def subscribe(self) -> None:
        """Send the subscriptions to every publisher (queued until connected, two at most)."""
        self._subscribed = time.monotonic()
        for address, sock in zip(self.addresses, self.sockets, strict=True):
            try:
                sock.send_multipart([SUBSCRIBE, *self.topics], zmq.NOBLOCK)
            except zmq.Again:
                log.debug("%s: not connected, subscriptions already queued", address)

    def set_topics(self, topics: Iterable[bytes]) -> None:
        """Subscribe to these from now on (sent at once if they changed)."""
        wanted = list(topics)
        if wanted != self.topics:
            self.topics = wanted
            self.subscribe()

    def keep_subscribed(self) -> None:
        """Subscribe again if RESUBSCRIBE_S has passed."""
        if time.monotonic() - self._subscribed >= RESUBSCRIBE_S:
            self.subscribe()

    def poll(self, timeout_ms: int) -> bool:
        """Whether a message arrives within ``timeout_ms`` (subscribing again meanwhile, as due)."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            self.keep_subscribed()
            left = deadline - time.monotonic()
            step = max(0.0, min(left, RESUBSCRIBE_S))
            if self._poller.poll(round(step * 1000)):
                return True
            if left <= step:
                return False

    def receive(self, timeout_ms: int, limit: int = 1000) -> list[list[zmq.Frame]]:
        """Wait up to ``timeout_ms`` for a message, then take whatever else is queued."""
        batch: list[list[zmq.Frame]] = []
        if not self.poll(timeout_ms):
            return batch
        for sock in self.sockets:
            while len(batch) < limit:
                try:
                    batch.append(sock.recv_multipart(zmq.NOBLOCK, copy=False))
                except zmq.Again:
                    break
        return batch

    def recv_multipart(self, timeout_ms: int = 60_000) -> list[bytes]:
        """One message (for tests and tools); TimeoutError if none comes within ``timeout_ms``."""
        deadline = time.monotonic() + timeout_ms / 1000
        while self.poll(max(0, round((deadline - time.monotonic()) * 1000))):
            for sock in self.sockets:
                try:
                    return sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    continue
        raise TimeoutError(f"no message within {timeout_ms} ms")

    def close(self, linger: int = 0) -> None:
        for sock in self.sockets:
            sock.close(linger=linger)


def bind_router(
    ctx: zmq.Context, endpoint: str, sndhwm: int, max_incoming: int, keys: Keys | None, link: str
) -> zmq.Socket:
    """A ROUTER bound at every address of ``endpoint`` (a CURVE server of ``link`` with ``keys``)
    that refuses a message part over ``max_incoming`` bytes before reading it, and reports a full
    queue (EAGAIN) and a peer that left (EHOSTUNREACH) instead of dropping silently."""
    sock = ctx.socket(zmq.ROUTER)
    if keys is not None:
        keys.serve(sock, link)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, 100)
    sock.setsockopt(zmq.MAXMSGSIZE, max_incoming)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    for address in addresses(endpoint):
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise zmq.ZMQError(exc.errno, f"cannot bind {address}: {exc.strerror}") from exc
    return sock


def connect_dealers(
    ctx: zmq.Context,
    addresses: Sequence[str],
    rcvhwm: int,
    sndhwm: int,
    max_message_mb: int,
    keys: Keys | None,
    link: str,
) -> list[zmq.Socket]:
    """One DEALER connected to each address (a CURVE client of ``link`` with ``keys``); libzmq
    refuses a message part over ``max_message_mb`` before it is read."""
    sockets = []
    for address in addresses:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_mb << 20)
        if keys is not None:
            keys.connect(sock, link)
        sock.connect(address)
        sockets.append(sock)
    return sockets


def send_to(sock: zmq.Socket, identity: bytes, parts: Sequence[Any]) -> bool | None:
    """``parts`` to the peer ``identity`` of a ROUTER: True if sent, False if its queue is full,
    None if it left."""
    try:
        sock.send_multipart([identity, *parts], flags=zmq.NOBLOCK, copy=False)
        return True
    except zmq.Again:
        return False
    except zmq.ZMQError as exc:
        if exc.errno != errno.EHOSTUNREACH:
            raise
        return None


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


# ---------------------------------------------------------------- what a stage received

#: bad messages are counted each; their log lines are throttled (a flood does not fill the disk)
bad_messages = ThrottledLog(log)


def decode_batch(stage: str, raw: list[list[zmq.Frame]], expected: type, metrics: Metrics) -> list[Message]:
    """Decode received messages (of the ``expected`` type or end-of-stream); each bad one is
    logged, named and counted as a drop."""
    decoded: list[Message] = []
    for parts in raw:
        msg = decode_one(stage, parts, expected, metrics)
        if msg is not None:
            decoded.append(msg)
    return decoded


def decode_one(
    stage: str, parts: list[zmq.Frame], expected: type, metrics: Metrics, eos: bool = True
) -> Message | None:
    """One message of the ``expected`` type (or, with ``eos``, end-of-stream); None if it is
    not one (logged, counted)."""
    try:
        msg = messages.decode(parts)
    except MessageError as exc:
        topic = bytes(parts[0].buffer) if parts else b""
        bad_messages.event(exc.reason, logging.ERROR, "%s: dropped message %r: %s", stage, topic[:80], exc)
        metrics.frames_dropped.labels(stage=stage, reason=exc.reason).inc()
        return None
    if not isinstance(msg, (expected, EndOfStream) if eos else expected):
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
