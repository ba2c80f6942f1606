"""Frames in shared memory for detect workers on capture's host (emopipe/shm.py): the ring, the
mapping, the message, who gets which form, and real runs with and without it."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import zmq

from emopipe import messages, shm, topology
from emopipe.messages import Frame, MessageError
from emopipe.shm import FrameRing, MappingError
from emopipe.workpool.broker import Broker, Work
from emopipe.workpool.members import Members
from helpers import HandWorker, alive, launch, pipeline_toml, reap, stage_pids, wait_for

HOST = shm.host_id()
pytestmark = pytest.mark.skipif(not HOST, reason="no /dev/shm here")


def segments() -> set[str]:
    return {p.name for p in shm.SHM_DIR.glob("emopipe-*")}


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    made = FrameRing.create((48, 64, 3), 12)
    assert made is not None
    yield made
    if made.name in segments():
        made.close()


def picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def put(ring: FrameRing, image: np.ndarray) -> int:
    offset = ring.put(image)
    assert offset is not None
    return offset


def test_a_frame_put_in_the_ring_is_mapped_read_only_with_its_pixels_and_the_slots_go_round(ring: FrameRing) -> None:
    assert ring.slots == 12
    offsets = [put(ring, picture(i)) for i in range(ring.slots)]
    assert offsets == [i * 48 * 64 * 3 for i in range(ring.slots)]
    assert ring.put(picture(99)) is None  # every slot taken: the frame goes through the socket
    view = shm.frame_view(ring.name, offsets[3], (48, 64, 3))
    np.testing.assert_array_equal(view, picture(3))
    assert not view.flags.writeable
    ring.give_back(offsets[5])
    ring.give_back(offsets[2])
    assert ring.put(picture(7)) == offsets[5]  # the oldest given back first
    assert ring.put(picture(8)) == offsets[2]
    assert ring.put(picture(9)) is None
    assert ring.put(np.zeros((10, 10, 3), np.uint8)) is None  # another size never goes in


def test_a_ring_of_large_frames_has_fewer_slots_and_none_is_made_without_room_in_dev_shm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big = FrameRing.create((1080, 1920, 3), 34)  # 6.2 MB a frame: 10 fit in RING_BYTES (64 MB)
    assert big is not None and big.slots == 10
    big.close()

    class Full:
        f_bavail, f_frsize = 100, 4096

    monkeypatch.setattr(shm.os, "statvfs", lambda path: Full())
    before = segments()
    assert FrameRing.create((480, 640, 3), 8) is None  # the frames go through the socket
    assert segments() == before


def test_a_reference_that_cannot_be_mapped_here_is_refused_by_name(ring: FrameRing) -> None:
    with pytest.raises(MappingError, match="not the name of a frame segment"):
        shm.frame_view("../etc/passwd", 0, (48, 64, 3))
    with pytest.raises(MappingError, match="outside segment"):
        shm.frame_view(ring.name, (ring.slots - 1) * 48 * 64 * 3 + 1, (48, 64, 3))
    with pytest.raises(MappingError, match="cannot be mapped here"):
        shm.frame_view("emopipe-0000000000000000", 0, (48, 64, 3))  # another host's (or gone)
    ring.close()
    assert ring.name not in segments()


def test_a_frame_message_in_shared_memory_decodes_to_the_same_pixels_and_a_bad_one_is_malformed(
    ring: FrameRing,
) -> None:
    image = picture(1)
    offset = put(ring, image)
    frame = Frame("cam0", 5, 1.5, image, wall=2.0)
    parts = messages.encode(frame, sent=3.0, shared=(ring.name, offset))
    assert len(parts[2]) == 0  # no pixels on the socket
    got = messages.decode(parts)
    assert isinstance(got, Frame) and (got.camera, got.seq, got.ts) == ("cam0", 5, 1.5)
    np.testing.assert_array_equal(got.image, image)
    wrong = messages.encode(frame, sent=3.0, shared=("emopipe-ffffffffffffffff", offset))
    with pytest.raises(MessageError, match="malformed: shared memory segment emopipe-ffffffffffffffff cannot"):
        messages.decode(wrong)
    carrying = [parts[0], parts[1], b"\x00" * 4]
    with pytest.raises(MessageError):
        messages.decode(carrying)


def test_a_join_says_whose_shared_memory_the_worker_maps() -> None:
    members = Members("detect", "frame", HOST)
    assert members.join(b"here", [b"detect", b"frame.", b"shm:" + HOST.encode()], 0.0) is None
    assert members.join(b"there", [b"detect", b"frame.", b"shm:other-host/1:2"], 0.0) is None
    assert members.join(b"old", [b"detect", b"frame."], 0.0) is None
    assert [members.shared(m) for m in (b"here", b"there", b"old")] == [True, False, False]
    assert members.takes(b"here", b"frame.cam0.")  # the item is not a prefix
    refused = members.join(b"twice", [b"detect", b"frame.", b"shm:a", b"shm:b"], 0.0)
    assert refused is not None and "shared-memory" in refused
    assert not Members("detect", "frame", "").join(b"x", [b"detect", b"frame.", b"shm:" + HOST.encode()], 0.0)
    assert not Members("detect", "frame", "").shared(b"x")  # a broker without shared memory shares none


def test_a_worker_on_this_host_gets_the_reference_and_one_elsewhere_the_pixels(
    zmq_ctx: zmq.Context, ipc_dir: Path, ring: FrameRing
) -> None:
    """The pool asks for a unit's shared form (``Broker.share``, the hub's) only as it hands the unit to
    a worker that maps its shared memory; one on another host gets the unit's bytes."""
    endpoint = f"ipc://{ipc_dir}/frames"
    pool = Broker(zmq_ctx, endpoint, topology.stage("detect"), True, shared_host=HOST)
    shared: list[tuple[str, int]] = []

    def share(work: Work) -> list[object]:
        shared.append((work.camera, work.seq))
        frame = messages.decode(work.parts)
        assert isinstance(frame, Frame)
        return messages.encode(frame, sent=time.time(), shared=(ring.name, put(ring, frame.image)))

    pool.share = share
    local = HandWorker(zmq_ctx, endpoint, prefixes=[b"frame.near."], shared=HOST)
    remote = HandWorker(zmq_ctx, endpoint, prefixes=[b"frame.far."], shared="another-host/3:4")
    try:
        assert wait_for(lambda: (list(pool.pump()), len(pool.workers()) == 2)[1], 5)
        for camera, seed in (("near", 1), ("far", 2)):
            pool.submit(camera, 0, messages.encode(Frame(camera, 0, 0.0, picture(seed)), sent=time.time()))

        def both_got() -> bool:
            list(pool.pump())
            local.take(20)
            remote.take(20)
            return bool(local.got and remote.got)

        assert wait_for(both_got, 5)
        assert shared == [("near", 0)]
        (near,), (far,) = local.messages, remote.messages
        assert isinstance(near, Frame) and isinstance(far, Frame)
        assert not near.image.flags.writeable and near.image.base is not None  # a view of the ring
        np.testing.assert_array_equal(near.image, picture(1))
        np.testing.assert_array_equal(far.image, picture(2))
    finally:
        local.close()
        remote.close()
        pool.close()


def stages_gone(log: Path) -> bool:
    return not any(alive(pid) for pid in stage_pids(log).values())


@pytest.fixture
def runs(tmp_path: Path, carphone: Path, model_path: Path) -> Iterator[dict[bool, tuple[str, str]]]:
    """The real video analysed lossless twice: with frames in shared memory (the default) and without."""
    ipc = Path(tempfile.mkdtemp(prefix="ep-", dir="/tmp"))
    out: dict[bool, tuple[str, str]] = {}
    try:
        for shared in (True, False):
            config = tmp_path / f"{shared}.toml"
            bus: dict[str, object] = {"subscribe_timeout_s": 60.0, "shared_memory": shared}
            config.write_text(pipeline_toml(ipc, [], classify={"model": model_path}, bus=bus))
            events, log = tmp_path / f"{shared}.jsonl", tmp_path / f"{shared}.log"
            proc = launch(config, log, "--source", f"cam0={carphone}", "--events", str(events))
            try:
                assert proc.wait(180) == 0, log.read_text()[-3000:]
                assert wait_for(partial(stages_gone, log), 10)  # capture logs its last line as it stops
            finally:
                reap(proc, log)
            out[shared] = events.read_text(), log.read_text()
        yield out
    finally:
        shutil.rmtree(ipc, ignore_errors=True)


def test_frames_go_to_detect_in_shared_memory_and_the_lines_are_the_same_as_through_the_socket(
    runs: dict[bool, tuple[str, str]], carphone_frames: list[np.ndarray]
) -> None:
    before = segments()
    (shared, shared_log), (plain, plain_log) = runs[True], runs[False]
    frames = len(carphone_frames)
    assert frames >= 100 and len(shared.splitlines()) == frames
    assert shared == plain  # the same boxes, tracks and labels, line for line
    said = [line for line in shared_log.splitlines() if " capture " in line]
    assert f"frames put in shared memory for detect workers on this host: cam0 {frames}" in shared_log, said[-6:]
    assert "shared memory" not in plain_log
    assert segments() <= before  # capture unlinked its ring
