"""Capture's side of frames in shared memory (``emopipe/shm.py``): each camera's ring, which frame
is in which slot, and the frames that may still go there.

A frame is put in its camera's ring as the detect pool hands it to a worker on this host
(``Broker.share``), not when it is published: a frame that waits for a worker that joins later is
shared too, and a slot is held only while detect has the frame. The slot is the ring's again once
detect has answered the frame or it was given up.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from emopipe import messages
from emopipe.messages import Frame
from emopipe.metrics import Metrics
from emopipe.shm import FrameRing
from emopipe.workpool import protocol
from emopipe.workpool.broker import Work

log = logging.getLogger("emopipe.capture")
#: live: a camera's slots (detect has one of its frames at a time: the rest is room to spare, and
#: slots are reused oldest first, so a frame given up as late still has a few frames' time to be read)
LIVE_SLOTS = 8


class SharedFrames:
    def __init__(self, lossless: bool, metrics: Metrics) -> None:
        self.metrics = metrics
        #: a camera's frames handed to detect and not answered yet, at most (more go through the socket)
        self.slots = protocol.LOSSLESS_WINDOW + 2 if lossless else LIVE_SLOTS
        self.rings: dict[str, FrameRing | None] = {}  # None: no room in /dev/shm for the camera's
        self.in_ring: dict[tuple[str, int], tuple[FrameRing, int]] = {}  # (camera, seq) -> its slot
        self.waiting: dict[tuple[str, int], Frame] = {}  # published, not handed to detect yet
        self.counts: Counter[str] = Counter()  # frames put in shared memory, by camera

    def keep(self, frame: Frame) -> None:
        """A frame published: it may go to a worker on this host."""
        self.waiting[(frame.camera, frame.seq)] = frame

    def share(self, work: Work) -> list[object] | None:
        """``work``'s frame put in its camera's ring, encoded as a reference (the detect pool's call as
        it hands the unit to a worker on this host); None if the ring has no room (the bytes go)."""
        frame = self.waiting.pop((work.camera, work.seq), None)
        if frame is None:
            return None
        ring = self._ring(frame.camera, frame.image.shape)
        offset = ring.put(frame.image) if ring is not None else None
        if ring is None or offset is None:
            return None
        self.in_ring[(frame.camera, frame.seq)] = ring, offset
        self.counts[frame.camera] += 1
        self.metrics.frames_shared.labels(camera=frame.camera).inc()
        return messages.encode(frame, time.time(), shared=(ring.name, offset))

    def release(self, camera: str, seq: int) -> None:
        """Detect is done with the frame (answered, or it was given up)."""
        self.waiting.pop((camera, seq), None)
        found = self.in_ring.pop((camera, seq), None)
        if found is not None:
            ring, offset = found
            ring.give_back(offset)

    def close(self) -> None:
        """The rings' shared memory goes (capture is stopping)."""
        if self.counts:
            each = ", ".join(f"{camera} {count}" for camera, count in sorted(self.counts.items()))
            log.info("frames put in shared memory for detect workers on this host: %s", each)
        for ring in self.rings.values():
            if ring is not None:
                ring.close()
        self.rings.clear()
        self.in_ring.clear()
        self.waiting.clear()

    def _ring(self, camera: str, shape: tuple[int, ...]) -> FrameRing | None:
        """The camera's ring for frames of ``shape``: made at its first frame, made again for a new
        frame size once the old ring's slots are all back."""
        ring = self.rings.get(camera)
        if camera in self.rings and ring is None:
            return None  # no room in /dev/shm: said once
        if ring is not None and ring.shape != shape and len(ring.free) == ring.slots:
            ring.close()
            ring = None
        if ring is None:
            ring = self.rings[camera] = FrameRing.create(shape, self.slots)  # None: said there, once
        return ring
