"""A wake-up a thread gives a loop that waits on ZeroMQ sockets: an eventfd, polled beside them.

Capture's readers set it when a frame is in their mailbox; a worker's handler threads when a
unit is done (``workpool/worker.py``). The loop then wakes at once, where a short poll timeout
would wake it hundreds of times a second while it has work and still answer up to that late.
"""

from __future__ import annotations

import os


class Waker:
    """An eventfd: ``set`` from any thread; the loop polls ``fd`` for POLLIN, then ``clear``s it
    before it looks for what is new (a ``set`` after the ``clear`` wakes the next poll)."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def set(self) -> None:
        os.eventfd_write(self.fd, 1)

    def clear(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            return  # it was not set

    def close(self) -> None:
        os.close(self.fd)
