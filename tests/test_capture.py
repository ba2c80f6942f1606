"""capture: folders, files, live streams with reconnects; the mailbox between reader and publisher."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import zmq
from prometheus_client import CollectorRegistry

from emopipe import bus, messages, metrics, topology
from emopipe.config import CaptureConfig, Config, PipelineConfig, SourceConfig
from emopipe.workpool.broker import Broker
from helpers import HandWorker, free_port, pipeline_toml, publisher, scrape_value, start_stage, stop, wait_for
from services.capture import main as capture_main
from services.capture.hub import Hub
from services.capture.sources import Captured, Mailbox, SourceReader, frame_rate, open_video
from services.sink.render import encode_jpeg
from services.sink.viewer import FrameStore, Viewer


def read_all(src: SourceConfig, registry: CollectorRegistry) -> list[Captured]:
    stopper = threading.Event()
    box = Mailbox(1000, lossless=True, wake=threading.Event())
    reader = SourceReader(src, CaptureConfig(pace="off"), box, stopper, metrics.create(registry, "capture", [src.id]))
    reader.start()
    reader.join(30)
    assert reader.error is None
    return box.take_all()


def test_folder_source_plays_its_images_in_name_order_and_names_an_unreadable_file(
    tmp_path: Path, carphone_frames: list[np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    for i in (2, 0, 1):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), carphone_frames[i])
    (tmp_path / "img3.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    registry = CollectorRegistry()
    with caplog.at_level(logging.ERROR):
        items = read_all(SourceConfig(id="dir", uri=str(tmp_path)), registry)
    assert [(i.seq, i.is_end) for i in items] == [(0, False), (1, False), (2, False), (3, True)]
    for i in range(3):
        np.testing.assert_array_equal(items[i].image, carphone_frames[i])
    assert f"cannot read image {tmp_path}/img3.jpg" in caplog.text
    assert registry.get_sample_value("emopipe_frames_dropped_total", {"stage": "capture", "reason": "read_error"}) == 1


def test_video_file_source_delivers_every_frame_then_its_end(carphone: Path, carphone_frames: list[np.ndarray]) -> None:
    items = read_all(SourceConfig(id="v", uri=str(carphone)), CollectorRegistry())
    assert len(items) == len(carphone_frames) + 1 and items[-1].is_end and items[-1].seq == len(carphone_frames)
    assert [i.seq for i in items[:-1]] == list(range(len(carphone_frames)))


def test_a_file_is_decoded_by_the_configured_number_of_threads_to_the_same_frames(carphone: Path) -> None:
    """capture.decode_threads: 1 (the default) gives FFmpeg one decoding thread, 0 leaves its own
    choice (a thread a core); the frames are the same either way."""
    src = SourceConfig(id="v", uri=str(carphone))
    single = open_video(src, decode_threads=CaptureConfig().decode_threads)
    chosen = open_video(src)
    try:
        assert single.get(cv2.CAP_PROP_N_THREADS) == 1
        assert chosen.get(cv2.CAP_PROP_N_THREADS) == min(psutil.cpu_count(), 16)
        for _ in range(30):
            (ok1, one), (ok2, other) = single.read(), chosen.read()
            assert ok1 and ok2
            np.testing.assert_array_equal(one, other)
    finally:
        single.release()
        chosen.release()
    items = read_all(src, CollectorRegistry())  # the reader opens files with it
    assert len(items) == 121 and items[-1].is_end


def test_file_plays_at_its_own_rate_unless_configured() -> None:
    cfg = CaptureConfig(folder_fps=5.0)
    assert frame_rate(SourceConfig(uri="a.mp4"), cfg, native=29.97) == 29.97
    assert frame_rate(SourceConfig(uri="a.mp4", fps=10.0), cfg, native=29.97) == 10.0
    assert frame_rate(SourceConfig(uri="dir"), cfg, native=0.0) == 5.0


def test_live_mailbox_keeps_the_newest_frame_and_reports_the_stale_one() -> None:
    box = Mailbox(1, lossless=False, wake=threading.Event())
    never = threading.Event()
    assert box.put(Captured("c", 0, 0.0, np.zeros(1)), never) == 0
    assert box.put(Captured("c", 1, 0.0, np.zeros(1)), never) == 1
    assert [i.seq for i in box.take_all()] == [1]


def test_lossless_mailbox_makes_the_reader_wait_instead_of_dropping() -> None:
    box = Mailbox(1, lossless=True, wake=threading.Event())
    never = threading.Event()
    box.put(Captured("c", 0, 0.0, np.zeros(1)), never)
    waiting = threading.Thread(target=box.put, args=(Captured("c", 1, 0.0, np.zeros(1)), never))
    waiting.start()
    time.sleep(0.2)
    assert waiting.is_alive()  # blocked: the mailbox is full
    assert [i.seq for i in box.take_all()] == [0]
    waiting.join(2)
    assert [i.seq for i in box.take_all()] == [1]


# ------------------------------------------------------------ a live HTTP stream


@pytest.fixture
def mjpeg_server(carphone_frames: list[np.ndarray]) -> Iterator[tuple[str, Viewer]]:
    """A real MJPEG-over-HTTP camera: the sink's own viewer, fed the video's frames at 20 fps."""
    store = FrameStore(["live"])
    server = Viewer(store, "127.0.0.1", free_port())
    server.start()
    jpegs = [encode_jpeg(f, 80) for f in carphone_frames]
    done = threading.Event()

    def feed() -> None:
        i = 0
        while not done.wait(0.05):
            store.put("live", jpegs[i % len(jpegs)])
            i += 1

    threading.Thread(target=feed, daemon=True).start()
    yield server.url + "stream/live.mjpg", server
    done.set()
    server.close()


def captured(port: int, camera: str) -> float:
    """Frames capture has read from ``camera`` and handed on (its /metrics)."""
    return scrape_value(port, f'emopipe_frames_processed_total{{camera="{camera}",stage="capture"}}')


def test_live_stream_source_publishes_frames_and_reconnects_when_the_camera_goes_away(
    mjpeg_server: tuple[str, Viewer], ipc_dir: Path
) -> None:
    url, server = mjpeg_server
    port = free_port()
    config = ipc_dir / "c.toml"
    text = pipeline_toml(ipc_dir, [], capture={"metrics_port": port, "subscribers": 1, "reconnect_backoff_s": 0.2})
    config.write_text(f'[[sources]]\nid = "live"\nuri = "{url}"\n\n' + text)
    proc = start_stage("capture", config, ipc_dir / "capture.log")
    try:
        assert wait_for(lambda: captured(port, "live") >= 3, 30), (ipc_dir / "capture.log").read_text()
        assert wait_for(lambda: scrape_value(port, 'emopipe_camera_up{camera="live"}') == 1, 10)
        server.close()  # the camera goes away
        assert wait_for(lambda: scrape_value(port, 'emopipe_camera_up{camera="live"}') == 0, 10)
        assert wait_for(lambda: scrape_value(port, 'emopipe_camera_reconnects_total{camera="live"}') >= 1, 10)
        assert proc.poll() is None
        assert "stopped delivering frames; reconnecting" in (ipc_dir / "capture.log").read_text()
    finally:
        assert stop(proc) == 0


def test_a_flood_of_300000_random_subscriptions_leaves_capture_publishing_and_counts_each(
    ipc_dir: Path, carphone: Path, zmq_ctx: zmq.Context
) -> None:
    """The peer the hardening issue tried (it grew capture from 85 MB to 1.1 GB over XPUB). Capture
    refuses and counts every subscription, and its memory stays within 50 MB of where it was."""
    port = free_port()
    config = ipc_dir / "c.toml"
    capture: dict[str, object] = {"metrics_port": port, "subscribers": 1}
    config.write_text(pipeline_toml(ipc_dir, [("cam0", carphone, True)], capture=capture, pipeline={"realtime": True}))
    proc = start_stage("capture", config, ipc_dir / "capture.log")
    try:
        assert wait_for(lambda: captured(port, "cam0") > 0, 30), (ipc_dir / "capture.log").read_text()
        process = psutil.Process(proc.pid)
        time.sleep(1.0)
        before = process.memory_info().rss
        flood = zmq_ctx.socket(zmq.DEALER)
        flood.setsockopt(zmq.SNDHWM, 0)
        flood.connect(f"ipc://{ipc_dir}/results")  # the fan-out, where subscriptions are kept
        rng = np.random.default_rng(0)
        count = 300_000
        for raw in rng.integers(0, 256, size=(count, 24), dtype=np.uint8):
            flood.send_multipart([bus.SUBSCRIBE, raw.tobytes()])
        refused = 'emopipe_subscriptions_refused_total{stage="capture"}'
        assert wait_for(lambda: scrape_value(port, refused) == count, 60), scrape_value(port, refused)
        after = process.memory_info().rss
        assert after - before < 50e6, f"capture RSS {before / 1e6:.0f} MB before, {after / 1e6:.0f} MB after"
        since = captured(port, "cam0")
        assert wait_for(lambda: captured(port, "cam0") >= since + 5, 5), "capture stopped taking frames after the flood"
        print(f"capture RSS {before / 1e6:.0f} MB before, {after / 1e6:.0f} MB after {count} subscriptions")
        log = (ipc_dir / "capture.log").read_text()
        assert 0 < log.count("subscription that no pipeline stage makes") <= 10  # rate-limited
        flood.close(linger=0)
    finally:
        code = stop(proc)
        assert code == 0, (ipc_dir / "capture.log").read_text()[-3000:]


def live_hub(ctx: zmq.Context, ipc: Path) -> tuple[Hub, metrics.Metrics]:
    """Capture's hub, live, with its pools' brokers and its results publisher in ``ipc``, and its metrics."""
    pools = [Broker(ctx, f"ipc://{ipc}/{s.takes.name}", s, lossless=False) for s in topology.pools() if s.takes]
    results = publisher(ctx, f"ipc://{ipc}/results", lossless=False, hwm=10, subscribe_timeout_s=5)
    found = metrics.create(CollectorRegistry(), "capture", ["cam0"])
    return Hub(pools, results, Config(pipeline=PipelineConfig(mode="live")), found), found


def close(hub: Hub) -> None:
    for pool in hub.pools:
        pool.close()
    hub.results.close()


def test_a_frame_over_the_message_limit_is_dropped_counted_and_the_next_one_handed_to_detect(
    zmq_ctx: zmq.Context, ipc_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub, found = live_hub(zmq_ctx, ipc_dir)
    worker = HandWorker(zmq_ctx, f"ipc://{ipc_dir}/frames")
    assert wait_for(lambda: (hub.pump(), bool(hub.pools[0].workers()))[1], 5)
    big = Captured("cam0", 0, 1.0, np.zeros((720, 1280, 3), np.uint8))  # 2.7 MB
    small = Captured("cam0", 1, 2.0, np.zeros((480, 640, 3), np.uint8))  # 0.9 MB
    capture_main.publish(big, hub, found, 1 << 20)
    capture_main.publish(small, hub, found, 1 << 20)
    assert wait_for(lambda: (hub.pump(), worker.take(10), worker.got == [("cam0", 1)])[2], 5), worker.got
    assert found.frames_dropped.labels(stage="capture", reason="oversized")._value.get() == 1
    assert "camera cam0: dropped a 1280x720 frame of 2764800 bytes, over bus.max_message_mb" in caplog.text
    assert list(hub.open["cam0"]) == [1]
    close(hub)
    worker.close()


def serve_stream(video: Path, port: int) -> subprocess.Popen[bytes]:
    """A real network camera: Debian's ffmpeg serving the video, looped at its own rate, over HTTP."""
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(video)]
        + ["-c", "copy", "-f", "mpegts", "-listen", "1", f"http://127.0.0.1:{port}/live.ts"],
        stdin=subprocess.DEVNULL,
    )


def frames_per_camera(port: int, cameras: Sequence[str], seconds: float) -> Counter[str]:
    """Frames capture read from each camera in ``seconds`` (its /metrics)."""
    start = {camera: captured(port, camera) for camera in cameras}
    time.sleep(seconds)
    return Counter({camera: int(captured(port, camera) - start[camera]) for camera in cameras})


@dataclass
class NetworkCamera:
    """Camera "net": a stream Debian's ffmpeg serves, read by a capture process (metrics on
    ``port``), with the other cameras ``cameras``."""

    video: Path
    stream_port: int
    server: subprocess.Popen[bytes]
    proc: subprocess.Popen[bytes]
    cameras: list[str]
    port: int
    log: Path
    up: str = 'emopipe_camera_up{camera="net"}'
    reconnects: str = 'emopipe_camera_reconnects_total{camera="net"}'

    def restart_stream(self) -> None:
        self.server = serve_stream(self.video, self.stream_port)

    def delivers(self, within: float) -> bool:
        return wait_for(lambda: frames_per_camera(self.port, ["net"], 0.5)["net"] > 0, within)

    def rates(self, seconds: float) -> Counter[str]:
        return frames_per_camera(self.port, self.cameras, seconds)


@contextmanager
def network_camera(
    ipc_dir: Path, video: Path, files: list[tuple[str, Path, bool]], **capture: object
) -> Iterator[NetworkCamera]:
    """Capture reading the served ``video`` as camera "net", and ``files``; yields once "net" delivers."""
    port, stream_port = free_port(), free_port()
    config, log = ipc_dir / "c.toml", ipc_dir / "capture.log"
    settings: dict[str, object] = {"metrics_port": port, "subscribers": 1, "reconnect_backoff_s": 0.5, **capture}
    text = pipeline_toml(ipc_dir, files, capture=settings, pipeline={"realtime": True})
    config.write_text(f'[[sources]]\nid = "net"\nuri = "http://127.0.0.1:{stream_port}/live.ts"\n\n' + text)
    server = serve_stream(video, stream_port)
    cameras = ["net", *(camera for camera, _, _ in files)]
    camera = NetworkCamera(video, stream_port, server, start_stage("capture", config, log), cameras, port, log)
    try:
        assert camera.delivers(30), log.read_text()
        yield camera
    finally:
        stop(camera.proc)
        camera.server.send_signal(signal.SIGCONT)  # a stalled server must run to die
        camera.server.kill()
        camera.server.wait()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg (.ci/run installs it)")
def test_a_network_camera_killed_and_restarted_reconnects_while_the_other_keeps_its_rate(
    ipc_dir: Path, carphone: Path
) -> None:
    with network_camera(ipc_dir, carphone, [("file", carphone, True)], reconnect_backoff_max_s=1.0) as net:
        base = scrape_value(net.port, net.reconnects)
        before = net.rates(4.0)
        net.server.kill()
        net.server.wait()
        assert wait_for(lambda: scrape_value(net.port, net.up) == 0, 10)
        during = net.rates(4.0)
        net.restart_stream()
        assert net.delivers(20), net.log.read_text()
        print(f"frames in 4 s, before: {dict(before)}, while the network camera was down: {dict(during)}")
        assert before["net"] > 40 and during["net"] < 10  # (a few were queued when it went down)
        assert during["file"] >= 0.9 * before["file"]
        assert scrape_value(net.port, net.up) == 1 and scrape_value(net.port, net.reconnects) > base
        assert net.proc.poll() is None


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg (.ci/run installs it)")
def test_a_network_camera_that_stalls_without_closing_is_noticed_and_reopened(ipc_dir: Path, carphone: Path) -> None:
    with network_camera(ipc_dir, carphone, [], stall_timeout_s=1.0) as net:
        base = scrape_value(net.port, net.reconnects)
        net.server.send_signal(signal.SIGSTOP)  # the connection stays open, no data comes
        stalled = time.monotonic()
        assert wait_for(lambda: scrape_value(net.port, net.reconnects) > base, 10), net.log.read_text()
        print(f"stall noticed and the camera reopened after {time.monotonic() - stalled:.1f} s")
        assert scrape_value(net.port, net.up) == 0
        assert "stopped delivering frames; reconnecting" in net.log.read_text()


def test_a_camera_that_ends_without_a_frame_still_sends_the_sink_its_end_of_results(
    zmq_ctx: zmq.Context, ipc_dir: Path
) -> None:
    hub, found = live_hub(zmq_ctx, ipc_dir)
    results = hub.results
    sink = bus.Subscriber(zmq_ctx, f"ipc://{ipc_dir}/results", [b"results.", b"eos."], hwm=10)
    assert wait_for(lambda: results.subscriber_count(b"eos.cam0.") == 1, 5)
    hub.end(messages.EndOfStream("cam0", 0, 1.0))  # an empty file: no frame at all
    assert hub.pump()
    eos = messages.decode(sink.recv_multipart(5000))
    assert isinstance(eos, messages.EndOfStream) and (eos.camera, eos.seq) == ("cam0", 0)
    close(hub)
    sink.close()
