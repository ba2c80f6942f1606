"""A stage's pool of workers, seen from the publisher that hands them work.

Workers connect to a bound ``Publisher`` (ROUTER) as DEALERs whose subscription names the
pool (``bus.Subscriber(pool=...)``); that subscription, repeated every ``bus.RESUBSCRIBE_S``,
is their heartbeat. The pool hands each unit of work (one encoded message of one camera)
to one live worker and takes its answer back on the same socket: the ZeroMQ guide's
load-balancing broker, with Paranoid Pirate heartbeats. Two ways to choose the worker:

* ``sticky`` (detect: a camera's tracks live in one worker): each camera is assigned to a
  worker and stays there; cameras are spread evenly over the live workers, and moved to a
  worker that joins while another holds two or more more than it. The worker that gets a
  camera starts its tracks afresh (the old worker's tracks end).
* not sticky (classify: stateless): each unit goes to the live worker with the least work
  in flight.

At most ``window`` units are in flight per camera (sticky) or per worker (not sticky).
What waits is kept in order; live, only a camera's newest waiting unit is kept (the older
one counts as ``stale``). A worker that is not heard from for ``bus.LIVENESS_S``, or that a
send finds gone, has left: its work in flight goes back to the front of the queue and is
handed to the others (lossless: nothing is lost; an answer that still comes from it is
ignored, unless the unit is still open: then it counts). Live, work unanswered after
``timeout_s`` is given up (``lost``); lossless, after LOSSLESS_TIMEOUT_S another worker tries.
A unit is given up (``failed``) after MAX_ATTEMPTS tries that went wrong: a worker that left
with it (each worker once: one that was only silent for a while and comes back is the same
worker), an answer of the wrong kind, or, lossless, no answer in LOSSLESS_TIMEOUT_S.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from emopipe import messages
from emopipe.bus import Publisher
from emopipe.messages import Message, MessageError

log = logging.getLogger(__name__)
#: how often the pool looks for workers that left and for work given up
CHECK_EVERY_S = 0.05
#: lossless: a unit a live worker has not answered in this long is handed to another worker
LOSSLESS_TIMEOUT_S = 60.0
#: a unit whose tries went wrong this often (its workers died on it, or it failed) is given up
MAX_ATTEMPTS = 3
#: a worker not heard from for this long is forgotten by the publisher too
FORGET_AFTER_S = 10.0


@dataclass
class Work:
    camera: str
    seq: int
    parts: Sequence[Any]
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
    """What a pool gave up on, by reason (live: stale or lost; either mode: failed, after
    MAX_ATTEMPTS): the hub takes these frames off its books."""

    work: Work
    reason: str


@dataclass
class Pool:
    pub: Publisher
    name: str
    kind: str  # the message kind handed out ("frame", "faces"): a worker must subscribe to it
    sticky: bool
    lossless: bool
    window: int
    timeout_s: float = 2.0
    waiting: dict[str, deque[Work]] = field(default_factory=dict)
    inflight: dict[bytes, dict[tuple[str, int], Work]] = field(default_factory=dict)
    assigned: dict[str, bytes] = field(default_factory=dict)
    given_up: list[Given] = field(default_factory=list)
    last_given: dict[bytes, float] = field(default_factory=dict)  # ties go to the worker idle longest
    _checked: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)  # answers, moved, lost workers, ignored answers

    def submit(self, camera: str, seq: int, parts: Sequence[Any]) -> None:
        queue = self.waiting.setdefault(camera, deque())
        if not self.lossless:
            while queue:
                self.given_up.append(Given(queue.popleft(), "stale"))
        queue.append(Work(camera, seq, parts))
        self._dispatch()

    def pending(self, camera: str) -> int:
        """Units of this camera waiting or in flight."""
        flying = sum(1 for works in self.inflight.values() for key in works if key[0] == camera)
        return len(self.waiting.get(camera, ())) + flying

    def workers(self, camera: str | None = None) -> list[bytes]:
        """The live workers (that take ``camera``, if given)."""
        return self.pub.members(self.name, None if camera is None else messages.topic(self.kind, camera))

    def pump(self) -> Iterator[Answer]:
        """Take the workers' answers (each matched to its work), notice workers that left, hand out what waits."""
        self.pub.pump_subscriptions()
        while self.pub.answers:
            identity, parts = self.pub.answers.popleft()
            answer = self._match(identity, parts)
            if answer is not None:
                yield answer
        self._check_workers()
        self._dispatch()

    def take_given_up(self) -> list[Given]:
        given, self.given_up = self.given_up, []
        return given

    def _match(self, identity: bytes, parts: list[zmq.Frame]) -> Answer | None:
        try:
            msg = messages.decode(parts)
        except MessageError as exc:
            self.counts["malformed"] += 1
            self.pub.refuse(identity, str(exc).encode(), f"an answer of a {self.name} worker that does not decode")
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

    def retry(self, work: Work, reason: str, left: bytes | None = None) -> None:
        """Hand ``work`` out again (first in its camera's queue), unless MAX_ATTEMPTS of its tries
        went wrong (``left``: the worker that left with it, counted once however often)."""
        if work.went_wrong(left) >= MAX_ATTEMPTS:
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

    def _check_workers(self) -> None:
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY_S:
            return
        self._checked = now
        live = set(self.workers())
        for member in list(self.inflight):
            if member not in live:
                self._lost(member)
        for camera, member in list(self.assigned.items()):
            if member not in live:
                del self.assigned[camera]
        for identity, peer in list(self.pub.peers.items()):
            if peer.pool == self.name and now - peer.seen > FORGET_AFTER_S:
                del self.pub.peers[identity]
        timeout = self.timeout_s if not self.lossless else LOSSLESS_TIMEOUT_S
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
            sent = self.pub.send_to(member, work.parts)
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
            takes = self.pub.peers[idlest].wants
            for busiest in sorted(live, key=self._cameras_of, reverse=True):
                if self._cameras_of(busiest) - self._cameras_of(idlest) < 2:
                    break
                movable = [c for c, m in self.assigned.items() if m == busiest and takes(messages.topic(self.kind, c))]
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
