"""Frames in shared memory, for the detect workers on capture's own host.

A 640x480 frame is 921,600 bytes. Through a socket it is copied by capture's ZeroMQ I/O thread
into the kernel and by the worker's out of it: 0.9 ms of CPU a frame on the 2-core AMD EPYC, 8% of
all the pipeline spends on a frame with eight cameras (BENCHMARKS.md). A worker that can map
capture's segments (the same host, ``/dev/shm`` mount and user: ``host_id``; it says its own in
JOIN, ``workpool/protocol.py``) is instead handed a reference: capture copies the frame into a
slot of its camera's ``FrameRing`` (0.07 ms) as it hands the frame out, and the worker maps the
slot (``frame_view``). Workers elsewhere, and the sink, still get the frame's bytes.

A slot is capture's again once detect has answered its frame or the frame was given up. Slots
are reused oldest first, so a worker still reading a frame given up as late (live) has the whole
ring's turn before its pixels change; its answer is ignored then anyway.

Standard library (``multiprocessing.shared_memory`` for capture, which creates and unlinks the
segments: its resource tracker unlinks them if capture is killed); the workers map them with
``mmap``, read-only, and never unlink them.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import secrets
from collections import OrderedDict, deque
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
#: a segment's name: capture's own, never a path
NAME = re.compile(r"emopipe-[0-9a-f]{16}")
#: a camera's ring takes this much shared memory at most (fewer slots for large frames)
RING_BYTES = 64 << 20
#: a ring is made only where /dev/shm has this many times its size free
FREE_MARGIN = 2
#: segments a worker keeps mapped (a few cameras' rings; an evicted one is mapped again if needed)
MAX_MAPPED = 64


def host_id(shm_dir: Path = SHM_DIR) -> str:
    """Who can map this process's segments: the machine's boot id, the ``/dev/shm`` mount's device
    and inode (containers with a /dev/shm of their own differ) and the user (segments are mode
    0600); "" without a /dev/shm."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = shm_dir.stat()
    except OSError:
        return ""
    return f"{boot}/{stat.st_dev}:{stat.st_ino}/{os.getuid()}"


class FrameRing:
    """One camera's slots for frames of one shape, in one segment; capture's main thread only."""

    def __init__(self, shape: tuple[int, ...], slots: int) -> None:
        self.shape = shape
        self.slot_bytes = int(np.prod(shape))
        self.segment = shared_memory.SharedMemory(
            name=f"emopipe-{secrets.token_hex(8)}", create=True, size=slots * self.slot_bytes
        )
        self.name = self.segment.name.lstrip("/")
        self.slots = slots
        self.free: deque[int] = deque(range(slots))

    @classmethod
    def create(cls, shape: tuple[int, ...], slots: int, shm_dir: Path = SHM_DIR) -> FrameRing | None:
        """A ring of ``slots`` (fewer if they take over RING_BYTES) for frames of ``shape`` (uint8), or
        None, said in the log, where there is no room or no /dev/shm: frames then go through the socket."""
        size = int(np.prod(shape))
        slots = min(slots, RING_BYTES // size) if size else 0
        if slots < 2:
            return None
        try:
            stat = os.statvfs(shm_dir)
            if stat.f_bavail * stat.f_frsize < FREE_MARGIN * slots * size:
                log.warning("no room in %s for frames of %s: they go through the socket", shm_dir, shape)
                return None
            return cls(shape, slots)
        except OSError as exc:
            log.warning("no shared memory for frames of %s (%s): they go through the socket", shape, exc)
            return None

    def put(self, image: np.ndarray) -> int | None:
        """Copy ``image`` into the oldest free slot; its offset, or None if every slot is taken."""
        if image.shape != self.shape or not self.free:
            return None
        slot = self.free.popleft()
        offset = slot * self.slot_bytes
        view = np.ndarray(self.shape, np.uint8, buffer=self.segment.buf, offset=offset)
        np.copyto(view, image)
        return offset

    def give_back(self, offset: int) -> None:
        self.free.append(offset // self.slot_bytes)

    def close(self) -> None:
        """Unlink the segment (workers that map it keep their mapping until they drop it)."""
        self.segment.unlink()
        self.segment.close()


class MappingError(ValueError):
    """A reference to shared memory this process cannot map (another host, a gone segment, out of bounds)."""


_mapped: OrderedDict[str, mmap.mmap] = OrderedDict()


def frame_view(name: str, offset: int, shape: tuple[int, int, int], shm_dir: Path = SHM_DIR) -> np.ndarray:
    """The read-only [H, W, 3] uint8 frame at ``offset`` of capture's segment ``name``."""
    if not NAME.fullmatch(name):
        raise MappingError(f"{name!r} is not the name of a frame segment")
    segment = _mapped.get(name)
    if segment is None:
        try:
            with open(shm_dir / name, "rb") as file:
                segment = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise MappingError(f"shared memory segment {name} cannot be mapped here: {exc}") from exc
        _mapped[name] = segment
        while len(_mapped) > MAX_MAPPED:  # arrays still using an evicted one keep it mapped
            _mapped.popitem(last=False)
    _mapped.move_to_end(name)
    size = int(np.prod(shape))
    if offset < 0 or offset + size > len(segment):
        raise MappingError(f"a frame of {size} bytes at {offset} is outside segment {name} ({len(segment)} bytes)")
    return np.frombuffer(segment, dtype=np.uint8, count=size, offset=offset).reshape(shape)
