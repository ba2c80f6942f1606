"""A pool's broker, capture's side of the work-pool protocol (``protocol.py``): it binds the
pool's socket, keeps the worker table, hands each unit to a worker by the pool's policy, and
matches the answers to their units. The hub (``services/capture/hub.py``) runs one per pool."""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq

from emopipe import bus, messages
from emopipe.curve import Keys
from emopipe.messages import Message, MessageError
from emopipe.throttle import ThrottledLog
from emopipe.topology import STICKY, Stage
from emopipe.workpool import protocol
from emopipe.workpool.members import Members

if TYPE_CHECKING:
    from prometheus_client.metrics import Counter as CounterChild

log = logging.getLogger(__name__)


@dataclass
class Work:
    camera: str
    seq: int
    parts: Sequence[Any]  # the encoded message handed out
    local: Sequence[Any] | None = None  # ... to a worker that maps the broker's shared memory (``share``)
    member: bytes | None = None
    sent: float = 0.0
    attempts: int = 0  # times handed out
    left_with: set[bytes] = field(default_factory=set)  # workers that left with it
    failures: int = 0  # tries that went wrong otherwise (no answer, a wrong one)

    def went_wrong(self, left: bytes | None) -> int:
        """Count a try that went wrong (``left``: the worker that left with it); how many have."""
        if left is None:
            self.failures += 1
        else:
            self.left_with.add(left)
        return self.failures + len(self.left_with)


@dataclass
class Answer:
    work: Work
    msg: Message  # decoded: checked
    parts: list[zmq.Frame]  # as it came, to send on unchanged


@dataclass
class Given:
    """A unit given up, by reason (live: ``stale`` or ``lost``; either mode: ``failed``)."""

    work: Work
    reason: str


class Broker:
    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        stage: Stage,
        lossless: bool,
        *,
        keys: Keys | None = None,
        refused: CounterChild | None = None,
        shared_host: str = "",
    ) -> None:
        """``shared_host``: this host's shared memory (``emopipe.shm.host_id``): a worker that joins
        with the same is handed a unit's ``local`` form (a frame in shared memory)."""
        if not stage.pooled or stage.takes is None:
            raise ValueError(f"stage {stage.name!r} is not a pool")
        self.stage = stage
        self.name = stage.name
        self.kind = stage.takes.kind  # what its workers are handed
        self.sticky = stage.policy == STICKY
        self.lossless = lossless
        self.window = protocol.LOSSLESS_WINDOW if lossless else stage.live_window
        self.endpoint = endpoint
        self.members = Members(stage.name, self.kind, shared_host)
        link = stage.takes.name
        self.sock = bus.bind_router(ctx, endpoint, protocol.WORKER_HWM, protocol.MAX_ANSWER_BYTES, keys, link)
        self._refused_metric = refused
        self._refused_log = ThrottledLog(log, protocol.REFUSED_LOG_EVERY_S)
        self.answers: deque[tuple[bytes, list[zmq.Frame]]] = deque()  # read, not yet matched
        self.waiting: dict[str, deque[Work]] = {}
        self.inflight: dict[bytes, dict[tuple[str, int], Work]] = {}
        self.assigned: dict[str, bytes] = {}  # sticky: camera -> worker
        self.given_up: list[Given] = []
        self.last_given: dict[bytes, float] = {}  # ties go to the worker idle longest
        self.counts: Counter[str] = Counter()  # answers, moved, workers_lost, ignored, malformed
        #: the unit's message for a worker that maps the broker's shared memory, made when one is to
        #: get it (None from it, or no ``share``: the unit's ``parts``); set by the hub
        self.share: Callable[[Work], Sequence[Any] | None] | None = None
        self._checked = 0.0

    @property
    def refused(self) -> int:
        return self._refused_log.count

    # ------------------------------------------------------------ the hub's calls

    def submit(self, camera: str, seq: int, parts: Sequence[Any]) -> None:
        queue = self.waiting.setdefault(camera, deque())
        if not self.lossless:
            while queue:
                self.given_up.append(Given(queue.popleft(), "stale"))
        queue.append(Work(camera, seq, parts))
        self._dispatch()

    def workers(self, camera: str | None = None) -> list[bytes]:
        """The live workers (that take ``camera``, if given)."""
        topic = None if camera is None else messages.topic(self.kind, camera)
        return self.members.alive(time.monotonic(), topic)

    def pump(self) -> Iterator[Answer]:
        """Read the workers' commands, match their answers to the units, notice workers that
        left, hand out what waits."""
        self.read()
        while self.answers:
            identity, parts = self.answers.popleft()
            answer = self._match(identity, parts)
            if answer is not None:
                yield answer
        self._check_workers()
        self._dispatch()

    def take_given_up(self) -> list[Given]:
        given, self.given_up = self.given_up, []
        return given

    def retry(self, work: Work, reason: str, left: bytes | None = None) -> None:
        """Hand ``work`` out again (first in its camera's queue), unless MAX_ATTEMPTS of its tries
        went wrong (``left``: the worker that left with it, counted once however often)."""
        if work.went_wrong(left) >= protocol.MAX_ATTEMPTS:
            log.error(
                "pool %s: camera %s frame %d: given up after %d attempts (%s)",
                self.name,
                work.camera,
                work.seq,
                work.attempts,
                reason,
            )
            self.given_up.append(Given(work, "failed"))
            return
        self.waiting.setdefault(work.camera, deque()).appendleft(work)

    def close(self) -> None:
        self.sock.close(linger=0)

    # ------------------------------------------------------------ commands

    def read(self) -> int:
        """Take what workers sent, READ_PER_PUMP messages at most; how many there were."""
        for count in range(protocol.READ_PER_PUMP):
            if not int(self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:  # cheaper than a recv raising Again
                return count
            identity, *body = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            self._command(identity.bytes, body)
        return protocol.READ_PER_PUMP

    def _command(self, identity: bytes, body: list[zmq.Frame]) -> None:
        now = time.monotonic()
        command = body[0].bytes if body and len(body[0]) <= 16 else b""
        if command == protocol.JOIN:
            why = self.members.join(identity, [part.bytes for part in body[1:]], now)
            if why is not None:
                self.refuse(identity, b"", why)
                return
            self._send(identity, [protocol.READY, self.name.encode()])
            log.info("pool %s: worker %s joined", self.name, identity.hex())
        elif command == protocol.HEARTBEAT:
            if not self.members.heard(identity, now):
                self._send(identity, [protocol.REJOIN])
        elif command == protocol.ANSWER:
            if not self.members.heard(identity, now):
                self.refuse(identity, b"", "an answer of a worker that has not joined")
                self._send(identity, [protocol.REJOIN])
            elif len(self.answers) >= protocol.MAX_ANSWERS:
                self.refuse(identity, b"", f"an answer over {protocol.MAX_ANSWERS} waiting")
            else:
                self.answers.append((identity, body[1:]))
        elif command == protocol.LEAVE:
            self.members.leave(identity)
            if identity in self.inflight:
                self._lost(identity)
        else:
            self.refuse(identity, b"|".join(part.bytes[:40] for part in body[:2]), "a message that is not a command")

    def refuse(self, identity: bytes, what: bytes, why: str) -> None:
        if self._refused_metric is not None:
            self._refused_metric.inc()
        self._refused_log.event(
            "command", logging.WARNING, "%s: refused %s from peer %s: %r", self.endpoint, why, identity.hex(), what[:80]
        )

    def _send(self, identity: bytes, parts: Sequence[Any]) -> bool | None:
        """True if sent, False if the worker's queue is full, None if it left (then it is forgotten)."""
        sent = bus.send_to(self.sock, identity, parts)
        if sent is None:
            self.members.leave(identity)
        return sent

    # ------------------------------------------------------------ answers and workers

    def _match(self, identity: bytes, parts: list[zmq.Frame]) -> Answer | None:
        try:
            msg = messages.decode(parts)
        except MessageError as exc:
            self.counts["malformed"] += 1
            self.refuse(identity, str(exc).encode(), f"an answer of a {self.name} worker that does not decode")
            return None
        key = (msg.camera, msg.seq)
        work = self.inflight.get(identity, {}).pop(key, None)
        if work is None:  # a late answer of a worker taken for gone: still good if the unit is not done
            work = self._unresolved(key)
        if work is None:  # done already, given up, or no work of ours
            self.counts["ignored"] += 1
            return None
        self.counts["answers"] += 1
        return Answer(work, msg, parts)

    def _unresolved(self, key: tuple[str, int]) -> Work | None:
        """Take the unit ``key`` off the books wherever it is (another worker, the queue), or None."""
        for works in self.inflight.values():
            if key in works:
                return works.pop(key)
        queue = self.waiting.get(key[0], deque())
        for work in queue:
            if work.seq == key[1]:
                queue.remove(work)
                return work
        return None

    def _check_workers(self) -> None:
        now = time.monotonic()
        if now - self._checked < protocol.CHECK_EVERY_S:
            return
        self._checked = now
        live = set(self.members.alive(now))
        for member in list(self.inflight):
            if member not in live:
                self._lost(member)
        for camera, member in list(self.assigned.items()):
            if member not in live:
                del self.assigned[camera]
        self.members.forget_silent(now)
        timeout = protocol.LOSSLESS_TIMEOUT_S if self.lossless else protocol.LIVE_TIMEOUT_S
        for member, works in self.inflight.items():
            for key, work in list(works.items()):
                if now - work.sent > timeout:
                    del works[key]
                    if self.lossless:  # a live worker that does not answer it: another one tries
                        log.warning(
                            "pool %s: worker %s did not answer %s in %.0f s", self.name, member.hex(), key, timeout
                        )
                        self.retry(work, "no answer")
                    else:
                        self.given_up.append(Given(work, "lost"))

    def _lost(self, member: bytes) -> None:
        works = self.inflight.pop(member, {})
        self.last_given.pop(member, None)
        self.counts["workers_lost"] += 1
        for camera in {w.camera for w in works.values()}:
            self.assigned.pop(camera, None)
        log.warning(
            "pool %s: worker %s left with %d unit(s) in flight: handing them to the others",
            self.name,
            member.hex(),
            len(works),
        )
        for work in sorted(works.values(), key=lambda w: w.seq, reverse=True):
            self.retry(work, f"worker {member.hex()} left", left=member)

    # ------------------------------------------------------------ assignment

    def _dispatch(self) -> None:
        """Hand out what waits, one unit per camera per turn (no camera starves another); a
        camera served goes to the back of the order."""
        if self.sticky:
            self._balance(self.workers())
        turn = True
        while turn:
            turn = False
            for camera in [c for c, queue in self.waiting.items() if queue]:
                if self._hand_out(camera):
                    self.waiting[camera] = self.waiting.pop(camera)
                    turn = True

    def _hand_out(self, camera: str) -> bool:
        """The camera's first waiting unit to a worker; False if none can take it now."""
        queue = self.waiting[camera]
        live = self.workers(camera)
        while live:
            member = self._choose(camera, live)
            if member is None:
                return False
            work = queue[0]
            sent = self._send(member, [protocol.WORK, *self._parts_for(member, work)])
            if sent is None:  # gone: its work goes back in the queue
                self._lost(member)
                live = [m for m in live if m != member]
                continue
            if not sent:
                return False
            queue.popleft()
            work.member, work.sent = member, time.monotonic()
            work.attempts += 1
            self.last_given[member] = work.sent
            self.inflight.setdefault(member, {})[(work.camera, work.seq)] = work
            return True
        return False

    def _parts_for(self, member: bytes, work: Work) -> Sequence[Any]:
        """``work``'s message as ``member`` gets it: in shared memory if it maps the broker's."""
        if self.share is None or not self.members.shared(member):
            return work.parts
        if work.local is None:
            work.local = self.share(work)
        return work.local if work.local is not None else work.parts

    def _choose(self, camera: str, live: list[bytes]) -> bytes | None:
        if self.sticky:
            member = self.assigned.get(camera)
            if member is None or member not in live:
                member = self.assigned[camera] = min(live, key=self._cameras_of)
                log.info("pool %s: camera %s to worker %s", self.name, camera, member.hex())
            flying = sum(1 for key in self.inflight.get(member, {}) if key[0] == camera)
            return member if flying < self.window else None
        member = min(live, key=lambda m: (len(self.inflight.get(m, {})), self.last_given.get(m, 0.0)))
        return member if len(self.inflight.get(member, {})) < self.window else None

    def _cameras_of(self, member: bytes) -> int:
        return sum(1 for m in self.assigned.values() if m == member)

    def _balance(self, live: list[bytes]) -> None:
        """Move a camera to a worker with at least two fewer (a worker joined): the idlest worker
        that takes one of a busier worker's cameras."""
        if len(live) < 2 or not self.assigned:
            return
        if any(m not in live for m in self.assigned.values()):
            return  # a worker that left: its cameras are reassigned as their work comes
        for idlest in sorted(live, key=self._cameras_of):
            for busiest in sorted(live, key=self._cameras_of, reverse=True):
                if self._cameras_of(busiest) - self._cameras_of(idlest) < 2:
                    break
                movable = [
                    c
                    for c, m in self.assigned.items()
                    if m == busiest and self.members.takes(idlest, messages.topic(self.kind, c))
                ]
                if movable:
                    self.assigned[movable[0]] = idlest
                    self.counts["moved"] += 1
                    log.info(
                        "pool %s: camera %s moved from worker %s to %s",
                        self.name,
                        movable[0],
                        busiest.hex(),
                        idlest.hex(),
                    )
                    return
