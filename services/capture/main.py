"""capture: read every configured source and hand its frames (and end-of-stream) to the hub."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import zmq
from prometheus_client import CollectorRegistry

from emopipe import curve, messages, service, shm, topology
from emopipe import metrics as metrics_mod
from emopipe.bus import Publisher, SubscriberTimeoutError
from emopipe.config import Config, resolve_path
from emopipe.messages import EndOfStream, Frame
from emopipe.metrics import Metrics
from emopipe.redact import redact
from emopipe.throttle import ThrottledLog
from emopipe.waker import Waker
from emopipe.workpool.broker import Broker
from services.capture.hub import Hub
from services.capture.sources import Captured, Mailbox, SourceError, SourceReader, folder_images, open_video

log = logging.getLogger("emopipe.capture")


def check_sources(cfg: Config) -> None:
    """Fail before starting if a file or folder source does not exist or holds no images."""
    for src in cfg.sources:
        if src.is_live:
            continue
        path = resolve_path(src.uri)
        if path.is_dir():
            folder_images(src)
        elif not path.is_file():
            raise SourceError(f"source {src.id}: {redact(src.uri)} is neither a video file nor a folder")
        else:  # a file that is not a video fails here once, not at every restart
            open_video(src).release()


def main(argv: Sequence[str] | None = None) -> int:
    cfg, stop = service.setup("capture", argv)
    if not cfg.sources:
        log.error("no sources configured ([[sources]] in the config)")
        return service.EXIT_CONFIG
    try:
        check_sources(cfg)
    except (SourceError, OSError) as exc:
        log.error("%s", exc)
        return service.EXIT_CONFIG
    metrics = metrics_mod.create(CollectorRegistry(), "capture", cfg.cameras)
    ctx = zmq.Context()
    sockets: list[Broker | Publisher] = []
    auth = None
    try:
        with service.starting("capture"):
            metrics_mod.serve(metrics, cfg.capture.metrics_port, cfg.pipeline.metrics_host)
            keys = curve.load(cfg.curve.keys)
            if keys is not None:
                auth = keys.authenticator(ctx)
                log.info("CURVE on every link; clients: the public keys in %s", keys.directory)
            refused = metrics.subscriptions_refused.labels(stage="capture")
            host = shm.host_id() if cfg.bus.shared_memory else ""
            for stage in topology.pools():
                assert stage.takes is not None
                endpoint = getattr(cfg.endpoints, stage.takes.name)
                shared = host if stage.takes.kind == "frame" else ""  # frames only: detect's
                sockets.append(
                    Broker(ctx, endpoint, stage, cfg.lossless, keys=keys, refused=refused, shared_host=shared)
                )
                log.info("%s workers on %s", stage.name, endpoint)
            results = publish_results(ctx, cfg, stop, metrics, keys)
            sockets.append(results)
        log.info(
            "cameras %s (%s): the sink on %s", cfg.cameras, "lossless" if cfg.lossless else "live", results.endpoint
        )
        pools = [s for s in sockets if isinstance(s, Broker)]
        hub = Hub(pools, results, cfg, metrics)
        try:
            return run(cfg, hub, stop, metrics)
        finally:
            hub.close()
    except SubscriberTimeoutError as exc:
        log.error("%s", exc)
        return 1
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
        if auth is not None:
            auth.stop()
        ctx.term()


#: results are small and leave in bursts (in frame order): more of them may queue for the sink
RESULTS_HWM = 64


def publish_results(
    ctx: zmq.Context, cfg: Config, stop: threading.Event, metrics: Metrics, keys: curve.Keys | None
) -> Publisher:
    """The last link of the topology: each camera's results, in frame order, to the sink."""
    link = topology.links()[-1].name
    return Publisher(
        ctx,
        getattr(cfg.endpoints, link),
        lossless=cfg.lossless,
        hwm=max(RESULTS_HWM, cfg.bus.lossless_hwm if cfg.lossless else cfg.bus.live_hwm),
        subscribers=cfg.capture.subscribers,
        subscribe_timeout_s=cfg.bus.subscribe_timeout_s,
        stop=stop,
        refused=metrics.subscriptions_refused.labels(stage="capture"),
        dropped=metrics.frames_dropped.labels(stage="capture", reason="hwm"),
        keys=keys,
        link=link,
    )


def run(cfg: Config, hub: Hub, stop: threading.Event, metrics: Metrics) -> int:
    # lossless: start reading only once the sink listens (detect's work waits for workers). A sink
    # subscribes to each camera's end-of-stream with its results; a peer that only watches results
    # (a probe, a dashboard) does not start the run, or it could take the first results alone
    for camera in cfg.cameras:
        if not hub.results.wait_subscribed(messages.topic("eos", camera)):
            return 0
    wake = Waker()
    mailboxes = [Mailbox(2 if cfg.lossless else 1, cfg.lossless, wake) for _ in cfg.sources]
    readers = [
        SourceReader(src, cfg.capture, box, stop, metrics, media_time=cfg.lossless)
        for src, box in zip(cfg.sources, mailboxes, strict=False)
    ]
    for reader in readers:
        reader.start()
    try:
        return publish_until_stopped(cfg, hub, stop, metrics, mailboxes, readers, wake)
    finally:
        # Readers end before the interpreter does: a daemon thread still decoding or logging at
        # exit can abort it. (Capture once exited with SIGABRT in ~25 stops of the flood test;
        # the cause was not caught, this is the likeliest.)
        stop.set()
        for reader in readers:
            reader.join(timeout=cfg.capture.stall_timeout_s + 1.0)
        wake.close()


#: how long the loop waits for a frame or an answer at most (heartbeats are checked this often)
POLL_MS = 50


def publish_until_stopped(
    cfg: Config,
    hub: Hub,
    stop: threading.Event,
    metrics: Metrics,
    mailboxes: list[Mailbox],
    readers: list[SourceReader],
    wake: Waker,
) -> int:
    last_repeat, closed = time.monotonic(), 0
    poller = zmq.Poller()
    poller.register(wake.fd, zmq.POLLIN)
    for sock in [pool.sock for pool in hub.pools] + [hub.results.sock]:
        poller.register(sock, zmq.POLLIN)
    while not stop.is_set():
        poller.poll(POLL_MS)
        wake.clear()
        for src, box in zip(cfg.sources, mailboxes, strict=True):
            if hub.room(src.id):
                for item in box.take_all():
                    publish(item, hub, metrics, cfg.bus.max_message_mb << 20)
        if not hub.pump():
            return 0
        if len(hub.closed) != closed:  # a camera's end-of-stream just went out: repeated from now on
            last_repeat, closed = time.monotonic(), len(hub.closed)
        elif closed and time.monotonic() - last_repeat > cfg.bus.eos_repeat_s:
            hub.repeat_ends()  # live, it may have been dropped; a restarted sink may have missed it
            last_repeat = time.monotonic()
        failed = [r for r in readers if r.error is not None]
        if failed:
            log.error("source %s failed: %s", failed[0].src.id, failed[0].error)
            return 1
    return 0


#: frames over the message size limit: counted each, logged now and then
oversized = ThrottledLog(log)


def publish(item: Captured, hub: Hub, metrics: Metrics, max_bytes: int) -> None:
    """A frame to the hub (the detect pool; the sink gets it with its results); end-of-stream
    to the hub, which sends it to the sink after the camera's last results."""
    if item.image is None:
        eos = EndOfStream(camera=item.camera, seq=item.seq, ts=item.ts, unread=item.unread)
        hub.end(eos)
        log.info("camera %s: end of stream after %d frames", item.camera, item.seq)
        return
    if item.image.nbytes > max_bytes:  # the next stages would cut capture off (bus.Subscriber)
        metrics.frames_dropped.labels(stage="capture", reason="oversized").inc()
        oversized.event(
            item.camera,
            logging.ERROR,
            "camera %s: dropped a %dx%d frame of %d bytes, over bus.max_message_mb",
            item.camera,
            item.image.shape[1],
            item.image.shape[0],
            item.image.nbytes,
        )
        return
    start = time.perf_counter()
    hub.frame(Frame(camera=item.camera, seq=item.seq, ts=item.ts, image=item.image, wall=item.wall), time.time())
    metrics.stage_latency.labels(stage="capture", camera=item.camera).observe(item.read_s + time.perf_counter() - start)
    metrics.frames_processed.labels(stage="capture", camera=item.camera).inc()
