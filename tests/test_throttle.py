"""Throttled log lines: the first event, then one per interval with the count meanwhile."""

from __future__ import annotations

import logging

import pytest

from emopipe import throttle
from emopipe.throttle import ThrottledLog


def test_the_first_line_then_one_per_interval_with_the_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [100.0]
    monkeypatch.setattr(throttle.time, "monotonic", lambda: now[0])
    log = ThrottledLog(logging.getLogger("t"), every_s=10)
    written = []
    for second in range(25):
        now[0] = 100.0 + second
        written.append(log.event("a", logging.ERROR, "bad %d", second))
        written.append(log.event("a", logging.ERROR, "bad %d", second))
    now[0] = 124.5
    written.append(log.event("b", logging.ERROR, "other"))  # another kind is not hidden by the flood
    assert log.count == 51 and log.counts == {"a": 50, "b": 1}
    assert [i for i, w in enumerate(written) if w] == [0, 20, 40, 50]  # seconds 0, 10, 20; then "b"
    assert [r.getMessage() for r in caplog.records] == [
        "bad 0",
        "bad 10 (20 like it since the last such line)",
        "bad 20 (20 like it since the last such line)",
        "other",
    ]
