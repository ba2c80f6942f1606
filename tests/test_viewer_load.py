"""Slow and many viewers: 20 clients reading the stream plus one that connects and never reads
leave the sink's processed FPS within 10% of what it is with no viewer, and its memory flat;
threads and sockets stay bounded whatever the clients do."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry

from deploy import measure
from helpers import fetch, free_port, launch, pipeline_toml, reap, stage_pids, wait_for
from services.sink.viewer import CLIENT_TIMEOUT_S, FrameStore, Viewer, index_page

VIEWERS = 20


def sink_frames(port: int) -> float:
    sample = 'emopipe_frames_processed_total{camera="cam0",stage="sink"}'
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
    return 0.0


def rate(port: int, seconds: float) -> float:
    first, start = sink_frames(port), time.monotonic()
    time.sleep(seconds)
    return (sink_frames(port) - first) / (time.monotonic() - start)


def read_stream(url: str, stop: threading.Event, got: list[int]) -> None:
    with urllib.request.urlopen(url, timeout=10) as resp:
        while not stop.is_set():
            got.append(len(resp.read(65536)))


def test_twenty_viewers_and_one_that_never_reads_leave_the_sink_rate_within_10_percent(
    ipc_dir: Path, model_path: Path
) -> None:
    video = measure.bench_video()  # 640x480 at 30 FPS: each viewer is sent about 1 MB/s
    metrics_port, viewer_port = free_port(), free_port()
    config = ipc_dir / "c.toml"
    sections: dict[str, dict[str, object]] = {
        "classify": {"model": model_path},
        "sink": {"metrics_port": metrics_port},
        "viewer": {"port": viewer_port},
    }
    config.write_text(pipeline_toml(ipc_dir, [], **sections))
    log = ipc_dir / "run.log"
    proc = launch(config, log, "--source", f"cam0={video}", "--loop", "--realtime")
    stop = threading.Event()
    stuck = socket.socket()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if sink_frames(metrics_port) > 30:
                    break
            except OSError:
                pass  # the sink's metrics are not up yet
            time.sleep(0.2)
        alone = rate(metrics_port, 5.0)
        sink = psutil.Process(stage_pids(log)["sink"])
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", viewer_port))
        stuck.sendall(b"GET /stream/cam0.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        url = f"http://127.0.0.1:{viewer_port}/stream/cam0.mjpg"
        received: list[list[int]] = [[] for _ in range(VIEWERS)]
        readers = [threading.Thread(target=read_stream, args=(url, stop, got), daemon=True) for got in received]
        for reader in readers:
            reader.start()
        time.sleep(2.0)
        rss_before = sink.memory_info().rss
        watched = rate(metrics_port, 5.0)
        rss_after = sink.memory_info().rss
        print(
            f"sink FPS alone {alone:.1f}, with {VIEWERS} viewers and a stuck one {watched:.1f} "
            f"(ratio {watched / alone:.2f}); sink RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MB; "
            f"bytes per viewer {min(sum(g) for g in received)}..{max(sum(g) for g in received)}"
        )
        assert alone > 10
        assert watched >= 0.9 * alone
        assert all(sum(got) > 100_000 for got in received)  # every viewer got frames
        assert rss_after - rss_before < 20 * 2**20  # the stuck client is not buffered for
        assert proc.poll() is None
    finally:
        stop.set()
        stuck.close()
        proc.terminate()
        proc.wait(30)
        reap(proc, log)


def test_200_abandoned_requests_for_a_camera_no_one_has_leave_the_sink_bounded(
    ipc_dir: Path, model_path: Path, carphone: Path
) -> None:
    """Each is answered 404 at once, so no thread or socket stays behind (they once stayed for good)."""
    viewer_port = free_port()
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [], classify={"model": model_path}, viewer={"port": viewer_port}))
    log = ipc_dir / "run.log"
    proc = launch(config, log, "--source", f"cam0={carphone}", "--loop", "--realtime")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "sink" not in stage_pids(log):
            time.sleep(0.2)
        sink = psutil.Process(stage_pids(log)["sink"])
        assert b"cam0" in fetch(f"http://127.0.0.1:{viewer_port}/", time.monotonic() + 60)
        time.sleep(1.0)
        threads, fds = sink.num_threads(), sink.num_fds()
        for _ in range(200):
            with socket.create_connection(("127.0.0.1", viewer_port), timeout=5) as conn:
                conn.sendall(b"GET /stream/nope.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{viewer_port}/stream/nope.mjpg", timeout=5)
            raise AssertionError("a stream of a camera no one has was served")
        except urllib.error.HTTPError as err:
            assert err.code == 404
        time.sleep(2.0)
        print(f"sink threads {threads} -> {sink.num_threads()}, fds {fds} -> {sink.num_fds()}")
        assert sink.num_threads() <= threads + 2 and sink.num_fds() <= fds + 2
    finally:
        reap(proc, log)


def test_clients_over_the_cap_are_answered_503_at_once_and_counted_and_threads_stay_bounded() -> None:
    """Connections that never send a request (or streams left open) hold a thread each: at most
    ``viewer.max_clients`` of them; the rest are refused at once, counted in a metric."""
    registry = CollectorRegistry()
    port = free_port()
    viewer = Viewer(FrameStore(["cam0"]), "127.0.0.1", port, max_clients=8, registry=registry)
    viewer.start()
    before = threading.active_count()
    idle: list[socket.socket] = []
    try:
        for _ in range(8):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        assert wait_for(lambda: registry.get_sample_value("emopipe_viewer_clients") == 8, 5)
        answers = []
        for _ in range(30):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(b"GET /stats.json HTTP/1.1\r\nHost: x\r\n\r\n")
                answers.append(conn.recv(200))
        assert all(a.startswith(b"HTTP/1.0 503") for a in answers), answers[:2]
        assert registry.get_sample_value("emopipe_viewer_refused_total") == 30
        assert threading.active_count() <= before + 8
    finally:
        for conn in idle:
            conn.close()
    # the idle ones gone, the viewer serves again
    assert wait_for(lambda: registry.get_sample_value("emopipe_viewer_clients") == 0, CLIENT_TIMEOUT_S + 5)
    assert b"cam0" in fetch(f"http://127.0.0.1:{port}/", time.monotonic() + 10)
    viewer.close()


def test_the_page_carries_the_figures_of_its_moment_so_they_show_before_the_first_poll() -> None:
    """The page draws the board's snapshot as it loads (a loaded machine answered the first
    /stats.json after headless chromium had dumped the page); text in it cannot end the script."""
    stats = {
        "labels": ["happy", "sad</script><b>"],
        "now": 100,
        "cameras": {"cam0": {"fps": 29.5, "latency_ms": 41, "faces": [], "mix": [], "history": {}}},
    }
    page = index_page(["cam0"], stats).decode()
    script = page.rsplit("<script>", 1)[1].split("</script>", 1)[0]
    assert script.startswith("show(") and script.endswith(");poll()")
    assert json.loads(script[len("show(") : -len(");poll()")]) == stats
    assert page.count("</script>") == 2  # the head's and this one: the label's did not close it
    assert (
        index_page(["cam0"])
        .decode()
        .endswith('show({"labels": [], "now": 0, "cameras": {}});poll()</script></body></html>')
    )
