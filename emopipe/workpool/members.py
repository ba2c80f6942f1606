"""A pool's worker table, as the broker keeps it: who joined, for which cameras, when each was
last heard from (``protocol``: JOIN, HEARTBEAT, LEAVE, liveness and expiry)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from emopipe import messages
from emopipe.workpool import protocol


@dataclass
class Member:
    prefixes: tuple[bytes, ...]  # the topics it takes: b"frame." or b"frame.cam0.", ...
    seen: float  # monotonic time it was last heard from
    shared: bool = False  # it maps the broker's shared memory (frames go there, not through the socket)

    def takes(self, topic: bytes) -> bool:
        return any(topic.startswith(p) for p in self.prefixes)


class Members:
    def __init__(self, pool: str, kind: str, host: str = "") -> None:
        """``host``: the broker's shared memory (``emopipe.shm.host_id``; "" for none)."""
        self.pool = pool
        self.host = host.encode()
        self.table: dict[bytes, Member] = {}
        #: the prefixes a worker of this pool may ask for: the pool's input kind, all or one camera
        self.wanted = re.compile(f"{kind}\\.(?:{messages.CAMERA_ID.pattern}\\.)?".encode())

    def join(self, identity: bytes, body: list[bytes], now: float) -> str | None:
        """A JOIN's ``[pool, prefix, ..., shm:HOST]`` (the last optional): None if taken, else why
        it is refused."""
        if not body or body[0] != self.pool.encode():
            return f"a JOIN for pool {body[0][:20]!r}, not {self.pool!r}" if body else "a JOIN without a pool"
        shared = [item for item in body[1:] if item.startswith(protocol.SHARED)]
        if len(shared) > 1 or any(len(item) > protocol.MAX_SHARED for item in shared):
            return f"a JOIN with {len(shared)} shared-memory items or one over {protocol.MAX_SHARED} bytes"
        prefixes = tuple(dict.fromkeys(item for item in body[1:] if not item.startswith(protocol.SHARED)))
        if not prefixes or len(prefixes) > protocol.MAX_PREFIXES:
            return f"a JOIN with {len(prefixes)} prefixes (1 to {protocol.MAX_PREFIXES})"
        bad = [p for p in prefixes if not self.wanted.fullmatch(p)]
        if bad:
            return f"a JOIN for {bad[0][:80]!r}, not a prefix of this pool's work"
        if identity not in self.table and len(self.table) >= protocol.MAX_WORKERS and not self._forget_stalest(now):
            return f"a worker over {protocol.MAX_WORKERS}"
        local = bool(self.host) and shared == [protocol.SHARED + self.host]
        self.table[identity] = Member(prefixes, now, local)
        return None

    def heard(self, identity: bytes, now: float) -> bool:
        """A worker was heard from; False if it is not in the table (it must JOIN again)."""
        member = self.table.get(identity)
        if member is None:
            return False
        member.seen = now
        return True

    def leave(self, identity: bytes) -> None:
        self.table.pop(identity, None)

    def alive(self, now: float, topic: bytes | None = None) -> list[bytes]:
        """The workers heard from within LIVENESS_S (that take ``topic``, if given)."""
        return [
            identity
            for identity, member in self.table.items()
            if now - member.seen < protocol.LIVENESS_S and (topic is None or member.takes(topic))
        ]

    def takes(self, identity: bytes, topic: bytes) -> bool:
        member = self.table.get(identity)
        return member is not None and member.takes(topic)

    def shared(self, identity: bytes) -> bool:
        """Whether the worker maps the broker's shared memory."""
        member = self.table.get(identity)
        return member is not None and member.shared

    def forget_silent(self, now: float) -> None:
        """Workers silent for FORGET_AFTER_S leave the table."""
        for identity, member in list(self.table.items()):
            if now - member.seen > protocol.FORGET_AFTER_S:
                del self.table[identity]

    def _forget_stalest(self, now: float) -> bool:
        identity, member = min(self.table.items(), key=lambda item: item[1].seen)
        if now - member.seen < protocol.STALE_WORKER_S:
            return False
        del self.table[identity]
        return True
