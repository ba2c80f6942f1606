"""Log lines for things a peer can repeat at will (bad messages, refused subscriptions): per
kind (say, each drop reason), the first one, then at most one every ``every_s`` with how many
happened meanwhile, so a flood does not fill the disk and one kind does not hide another.
The counters in ``emopipe.metrics`` still count every one."""

from __future__ import annotations

import logging
import time
from collections import Counter


class ThrottledLog:
    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self.counts: Counter[str] = Counter()  # events so far, per kind
        self._last: dict[str, tuple[float, int]] = {}  # per kind: when its last line was written, the count then

    @property
    def count(self) -> int:
        return self.counts.total()

    def event(self, kind: str, level: int, msg: str, *args: object, count: int = 1) -> bool:
        """Count ``count`` events of ``kind``; write its line (with the number since that kind's
        last line) if due. True if written."""
        self.counts[kind] += count
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last[0] < self.every_s:
            return False
        since = self.counts[kind] - last[1] if last is not None else self.counts[kind]
        suffix = f" ({since} like it since the last such line)" if since > 1 else ""
        self.logger.log(level, msg + suffix, *args)
        self._last[kind] = (now, self.counts[kind])
        return True
