"""Delivery modes: lossless back-pressure that waits for subscribers, live newest-wins."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from emopipe import bus, messages
from emopipe.config import Config
from emopipe.messages import EndOfStream, Frame
from helpers import wait_for


def frame(seq: int, camera: str = "cam0") -> Frame:
    return Frame(camera=camera, seq=seq, ts=float(seq), image=np.full((8, 8, 3), seq % 256, dtype=np.uint8))


def publisher(
    ctx: zmq.Context, endpoint: str, lossless: bool, stop: threading.Event, subscribers: int = 1
) -> bus.Publisher:
    return bus.Publisher(
        ctx, endpoint, lossless=lossless, hwm=2, subscribers=subscribers, subscribe_timeout_s=10.0, stop=stop
    )


def test_lossless_publisher_waits_for_a_late_subscriber_so_it_gets_the_first_frame(
    zmq_ctx: zmq.Context, ipc_dir: Path
) -> None:
    endpoint = f"ipc://{ipc_dir}/f"
    stop = threading.Event()
    pub = publisher(zmq_ctx, endpoint, True, stop)
    sent = threading.Thread(target=lambda: [pub.send(frame(i)) for i in range(3)])
    sent.start()
    time.sleep(0.3)  # the publisher is now waiting; a PUB socket would have dropped these
    sub = bus.Subscriber(zmq_ctx, endpoint, bus.topics_for(["frame"], []), hwm=10)
    got = [messages.decode(sub.recv_multipart()) for _ in range(3)]
    sent.join(5)
    assert [m.seq for m in got] == [0, 1, 2]


def test_lossless_publisher_never_drops_when_the_subscriber_is_slow(zmq_ctx: zmq.Context, ipc_dir: Path) -> None:
    endpoint = f"ipc://{ipc_dir}/f"
    stop = threading.Event()
    pub = publisher(zmq_ctx, endpoint, True, stop)
    sub = bus.Subscriber(zmq_ctx, endpoint, bus.topics_for(["frame", "eos"], ["cam0"]), hwm=2)
    count = 300
    sender = threading.Thread(
        target=lambda: [pub.send(frame(i)) for i in range(count)] + [pub.send(EndOfStream("cam0", count, 0.0))]
    )
    sender.start()
    seqs = []
    while True:
        msg = messages.decode(sub.recv_multipart())
        if isinstance(msg, EndOfStream):
            break
        seqs.append(msg.seq)
        if len(seqs) % 50 == 0:
            time.sleep(0.05)  # slower than the sender: it must wait, not drop
    sender.join(5)
    assert seqs == list(range(count))


def test_lossless_publisher_that_loses_its_subscriber_waits_for_the_next_and_sends_it_the_message(
    zmq_ctx: zmq.Context, ipc_dir: Path
) -> None:
    endpoint = f"ipc://{ipc_dir}/f"
    pub = publisher(zmq_ctx, endpoint, True, threading.Event())
    first = bus.Subscriber(zmq_ctx, endpoint, [messages.topic("frame")], hwm=10)
    assert pub.send(frame(0)) and messages.decode(first.recv_multipart()).seq == 0
    first.close()  # a restarted stage: the next one is another peer
    for _ in range(10):  # libzmq tells the socket in a few steps, each when it is next used
        pub.pump_subscriptions()
        time.sleep(0.02)
    later: list[bus.Subscriber] = []
    threading.Timer(
        0.5, lambda: later.append(bus.Subscriber(zmq_ctx, endpoint, [messages.topic("frame")], hwm=10))
    ).start()
    assert pub.send(frame(1))  # not to nobody: it waits for the successor
    assert later and messages.decode(later[0].recv_multipart(5000)).seq == 1
    later[0].close()
    pub.close()


def test_lossless_publisher_gives_up_waiting_when_stopped(zmq_ctx: zmq.Context, ipc_dir: Path) -> None:
    stop = threading.Event()
    pub = publisher(zmq_ctx, f"ipc://{ipc_dir}/f", True, stop)
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert pub.send(frame(0)) is False
    assert time.monotonic() - started < 3


def test_lossless_publisher_waits_for_every_expected_subscriber(zmq_ctx: zmq.Context, ipc_dir: Path) -> None:
    endpoint = f"ipc://{ipc_dir}/f"
    pub = publisher(zmq_ctx, endpoint, True, threading.Event(), subscribers=2)
    subs = [  # kept referenced: a collected socket unsubscribes
        bus.Subscriber(zmq_ctx, endpoint, [messages.topic("frame")], hwm=10),
        bus.Subscriber(zmq_ctx, endpoint, [messages.topic("frame", "cam0")], hwm=10),
        bus.Subscriber(zmq_ctx, endpoint, [messages.topic("frame", "cam1")], hwm=10),
    ]
    deadline = time.monotonic() + 5
    while pub.subscriber_count(messages.topic("frame", "cam0")) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pub.subscriber_count(messages.topic("frame", "cam0")) == 2
    assert pub.subscriber_count(messages.topic("frame", "cam2")) == 1
    assert len(subs) == 3


def test_live_publisher_does_not_block_on_a_subscriber_that_does_not_read(zmq_ctx: zmq.Context, ipc_dir: Path) -> None:
    endpoint = f"ipc://{ipc_dir}/f"
    pub = publisher(zmq_ctx, endpoint, False, threading.Event())
    sub = bus.Subscriber(zmq_ctx, endpoint, [messages.topic("frame")], hwm=2)
    assert wait_for(lambda: pub.subscriber_count(b"frame.cam0.") == 1, 5)  # live: no waiting in send
    sender = threading.Thread(target=lambda: [pub.send(frame(i)) for i in range(200)], daemon=True)
    sender.start()
    sender.join(timeout=30)  # generous: this guards against blocking, it is no speed test
    assert not sender.is_alive(), "the live publisher blocked on a subscriber that does not read"
    received: list[object] = []
    while batch := sub.receive(timeout_ms=1000):
        received += batch
    # The high-water marks bounded the queue: the subscriber got some frames, not all 200,
    # and the publisher counted each one it dropped.
    assert 1 <= len(received) < 200
    assert pub.dropped == 200 - len(received)


def test_a_subscriber_fans_in_from_every_address_of_a_comma_separated_endpoint(
    zmq_ctx: zmq.Context, ipc_dir: Path
) -> None:
    """Scale-out: two detect processes each bind their own address; classify connects to both."""
    stop = threading.Event()
    first = publisher(zmq_ctx, f"ipc://{ipc_dir}/a", True, stop)
    second = publisher(zmq_ctx, f"ipc://{ipc_dir}/b", True, stop)
    sub = bus.Subscriber(zmq_ctx, f"ipc://{ipc_dir}/a, ipc://{ipc_dir}/b", [messages.topic("frame")], hwm=10)
    assert first.send(frame(1, "left")) and second.send(frame(2, "right"))
    got = {messages.decode(sub.recv_multipart()).camera for _ in range(2)}
    assert got == {"left", "right"}


def test_the_publisher_accepts_pipeline_subscriptions_only_and_counts_the_rest(
    zmq_ctx: zmq.Context, ipc_dir: Path
) -> None:
    endpoint = f"ipc://{ipc_dir}/f"
    pub = publisher(zmq_ctx, endpoint, False, threading.Event())
    good = bus.Subscriber(zmq_ctx, endpoint, bus.topics_for(["frame"], ["cam0"]), hwm=10)
    everything = bus.Subscriber(zmq_ctx, endpoint, [b""], hwm=10)  # would watch every camera
    hostile = zmq_ctx.socket(zmq.DEALER)
    hostile.connect(endpoint)
    bad = [b"evil", b"frame", b"frame.cam0\n.", b"frame." + b"x" * 65 + b"."]
    # a pipeline topic is accepted from anyone (ipc:// mode 0700 is who may connect)
    hostile.send_multipart([bus.SUBSCRIBE, *bad, b"eos.cam0."])
    hostile.send_multipart([b"hello", b"frame."])  # not a subscription
    xsub = zmq_ctx.socket(zmq.XSUB)  # the old attack: libzmq refuses the socket type
    xsub.connect(endpoint)
    xsub.send(b"\x01frame.")
    deadline = time.monotonic() + 5
    while pub.refused < 6 and time.monotonic() < deadline:
        good.poll(20)  # subscribers send theirs while they wait for messages
        everything.poll(20)
        pub.pump_subscriptions()
    assert pub.refused == 6  # the four bad prefixes, the empty one, the message that is not a subscription
    assert dict(pub.subscriptions) == {b"frame.cam0.": 1, b"eos.cam0.": 1}
    assert len(pub.peers) == 2  # a peer with no accepted prefix takes no room
    pub.send(frame(0))
    assert good.poll(2000) and messages.decode(good.recv_multipart()).seq == 0
    assert not everything.poll(300) and not xsub.poll(0)
    for sub in (good, everything):
        sub.close()
    for sock in (hostile, xsub):
        sock.close(linger=0)
    pub.close()


def test_a_subscription_flood_leaves_the_tables_bounded_and_a_peer_that_left_is_forgotten(
    zmq_ctx: zmq.Context, ipc_dir: Path
) -> None:
    endpoint = f"ipc://{ipc_dir}/f"
    pub = publisher(zmq_ctx, endpoint, False, threading.Event())
    flood = zmq_ctx.socket(zmq.DEALER)
    flood.connect(endpoint)
    wanted = 2 * bus.MAX_TOPICS_PER_PEER  # distinct subscriptions of pipeline form, to fake cameras
    for repeat in range(50):  # and again: each replaces the peer's last
        flood.send_multipart([bus.SUBSCRIBE, *(b"frame.fake%d." % (i + repeat) for i in range(wanted))])
    peers = [zmq_ctx.socket(zmq.DEALER) for _ in range(bus.MAX_PEERS + 3)]
    for peer in peers:
        peer.connect(endpoint)
        peer.send_multipart([bus.SUBSCRIBE, b"frame.cam0."])
    expected = 50 * (wanted - bus.MAX_TOPICS_PER_PEER) + 4  # the flood's extra prefixes; 4 peers over the limit
    deadline = time.monotonic() + 30
    while pub.refused < expected and time.monotonic() < deadline:
        pub.pump_subscriptions()
        time.sleep(0.01)
    assert pub.refused == expected and len(pub.peers) == bus.MAX_PEERS
    assert max(len(p.prefixes) for p in pub.peers.values()) == bus.MAX_TOPICS_PER_PEER
    flood.close(linger=0)
    for peer in peers:
        peer.close(linger=0)
    time.sleep(0.5)
    pub.send(frame(0))  # a send to a peer that left fails: it is forgotten
    assert not any(p.wants(b"frame.cam0.") for p in pub.peers.values())
    pub.close()


def test_default_endpoints_are_sockets_in_a_directory_only_this_user_may_open(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    path = bus.runtime_dir(env)
    assert path == runtime / "emopipe" and stat.S_IMODE(path.stat().st_mode) == 0o700
    path.chmod(0o755)  # others could connect: refused, naming the directory and its mode
    with pytest.raises(PermissionError, match=rf"{path} must be a directory of user \d+ with mode 0700 .*mode 755"):
        bus.runtime_dir(env)
    fallback = bus.runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path / "missing")})
    assert fallback.name == f"emopipe-{os.getuid()}" and stat.S_IMODE(fallback.stat().st_mode) == 0o700
    assert bus.addresses(Config().endpoints.frames) == [f"ipc://{bus.runtime_dir()}/frames"]


def test_a_part_over_the_size_limit_is_refused_before_it_is_read(zmq_ctx: zmq.Context, ipc_dir: Path) -> None:
    endpoint = f"ipc://{ipc_dir}/limit"
    pub = zmq_ctx.socket(zmq.ROUTER)  # a publisher that does not keep to the limit
    pub.bind(endpoint)
    sub = bus.Subscriber(zmq_ctx, endpoint, [b"eos."], hwm=10, max_message_mb=1)
    peer, *subscription = pub.recv_multipart()
    assert subscription == [bus.SUBSCRIBE, b"eos."]
    small = messages.encode(EndOfStream("cam0", 1, 1.0), sent=1.0)
    pub.send_multipart([peer, *small])
    assert messages.decode(sub.recv_multipart()) == EndOfStream("cam0", 1, 1.0, sent=1.0)
    pub.send_multipart([peer, b"eos.cam0.", b"h", b"x" * (2 << 20)])
    for _ in range(20):
        pub.send_multipart([peer, *small])
    time.sleep(0.5)
    received = []
    while sub.poll(100):
        received.append(sub.recv_multipart())
    assert len(received) <= 20 and all(len(b"".join(parts)) < 1000 for parts in received)  # never the big one
    pub.close(linger=0)
    sub.close()
