"""The live web viewer: stdlib HTTP server, MJPEG per camera, no front-end build step.

/                        index page: a colour key, one <img> per camera (click: large) with its
                         figures: each face's labelled probabilities and its last minute
/stream/<camera>.mjpg    multipart/x-mixed-replace stream of annotated JPEGs
/snapshot/<camera>.jpg   the latest annotated JPEG
/stats.json              per camera: FPS, latency, the faces (track, smoothed label and
                         probabilities), the last minute's emotion mix and each live track's
                         smoothed label per second of the last minute (services/sink/stats.py)
"""

from __future__ import annotations

import html
import json
import logging
import re
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Gauge

from emopipe.config import ViewerConfig
from emopipe.labels import COLOURS, EMOTIONS, OTHER_COLOUR
from emopipe.messages import CAMERA_ID
from services.sink.stats import MIX_SECONDS, Board

log = logging.getLogger(__name__)
BOUNDARY = "emopipeframe"
_PATH = re.compile(rf"^/(stream|snapshot)/({CAMERA_ID.pattern})\.(mjpg|jpg)$")


#: a stream client is sent only the newest frame when it is ready for one (never a queue), and
#: dropped once it has not read for this long (seconds)
CLIENT_TIMEOUT_S = 10.0
#: viewer connections served at once (viewer.max_clients): each holds a thread and a socket
MAX_CLIENTS = ViewerConfig().max_clients
#: a snapshot request keeps a camera's frames encoded this long (seconds)
SNAPSHOT_INTEREST_S = 5.0


class FrameStore:
    """The latest JPEG per camera, with a version number readers can wait on.

    The sink draws and encodes a camera's frames only while someone ``wanted`` them:
    a stream is open, or a snapshot was asked for recently (encoding costs milliseconds
    per frame that no one would see).
    """

    def __init__(self, cameras: Sequence[str]) -> None:
        self._cond = threading.Condition()
        self._latest: dict[str, tuple[int, bytes]] = {}
        self._watchers: Counter[str] = Counter()
        self._asked: dict[str, float] = {}
        self.cameras = list(cameras)
        self.closed = False
        self.board = Board()

    def wanted(self, camera: str) -> bool:
        with self._cond:
            if self._watchers[camera] > 0 or camera not in self._latest:
                return True
            return time.monotonic() - self._asked.get(camera, -SNAPSHOT_INTEREST_S) < SNAPSHOT_INTEREST_S

    def watch(self, camera: str, delta: int) -> None:
        with self._cond:
            self._watchers[camera] += delta

    def ask(self, camera: str) -> None:
        with self._cond:
            self._asked[camera] = time.monotonic()

    def put(self, camera: str, jpeg: bytes) -> None:
        with self._cond:
            version = self._latest.get(camera, (0, b""))[0] + 1
            self._latest[camera] = (version, jpeg)
            if camera not in self.cameras:
                self.cameras.append(camera)
            self._cond.notify_all()

    def latest(self, camera: str) -> tuple[int, bytes] | None:
        with self._cond:
            return self._latest.get(camera)

    def wait_newer(self, camera: str, version: int, timeout: float) -> tuple[int, bytes] | None:
        with self._cond:
            self._cond.wait_for(lambda: self.closed or self._latest.get(camera, (0, b""))[0] > version, timeout=timeout)
            entry = self._latest.get(camera)
            return entry if entry and entry[0] > version else None

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


_PAGE_STYLE = (
    "body{font-family:sans-serif;background:#111;color:#eee;margin:16px}"
    "header{display:flex;flex-wrap:wrap;align-items:baseline;gap:8px 24px;margin:0 0 12px}"
    "h1{font-size:1.4em;margin:0}h1 small{font-weight:normal;color:#999;font-size:.6em}"
    ".key{display:flex;flex-wrap:wrap;gap:4px 14px;list-style:none;padding:0;margin:0;font-size:.9em}"
    ".key li{display:flex;align-items:center;gap:5px}.key i{display:inline-block;width:14px;height:14px;"
    "border-radius:3px}.hint{color:#777;font-size:.8em}"
    "main{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:16px}"
    "figure{margin:0;background:#1c1c1c;border:1px solid #333;border-radius:4px;overflow:hidden}"
    "figcaption{display:flex;justify-content:space-between;padding:6px 10px;font-weight:bold}"
    "figcaption span{font-weight:normal;font-size:.85em;color:#999}figcaption span.live{color:#3c3}"
    "figcaption span.down{color:#f55}img{display:block;width:100%;height:auto;background:#000;cursor:zoom-in}"
    "figure.big{position:fixed;inset:0;z-index:9;display:grid;border-radius:0;border:0;"
    "grid-template:auto minmax(0,1fr)/minmax(0,1fr) 340px}figure.big figcaption{grid-column:1/3}"
    "figure.big img{height:100%;object-fit:contain;cursor:zoom-out}figure.big .stats{overflow-y:auto}"
    "body.zoomed{overflow:hidden}"
    ".stats{padding:6px 10px;font-size:.85em}.rate{color:#ccc}.faces{list-style:none;padding:0;margin:6px 0}"
    ".face{margin:8px 0 10px}.who{display:flex;align-items:center;gap:6px;font-weight:bold;margin-bottom:3px}"
    ".who i{width:12px;height:12px;border-radius:50%}"
    ".p{display:grid;grid-template-columns:64px 1fr 40px;align-items:center;gap:6px;height:15px;font-size:12px}"
    ".p .n{color:#bbb}.p .v{text-align:right;font-variant-numeric:tabular-nums}"
    ".p .b{height:10px;background:#262626;border-radius:2px;overflow:hidden}.p .b i{display:block;height:100%}"
    ".hist,.strip{display:flex;height:12px;margin-top:4px;background:#262626;border-radius:2px;overflow:hidden}"
    ".strip{height:14px}.strip i{flex:1;display:flex;flex-direction:column}.strip b{display:block}"
    ".axis{display:flex;justify-content:space-between;color:#777;font-size:11px}"
)
# Under each stream, from /stats.json once a second: FPS, latency, each face's seven labelled probabilities
# and its last minute, and the camera's emotion mix. (Started at the end of the body: the page's load event
# never fires while MJPEG streams are open.)
_STATS_SCRIPT = (
    f"var COLOURS={json.dumps(COLOURS)},HISTORY_S={MIX_SECONDS};"
    f"function colour(l){{return COLOURS[l]||'{OTHER_COLOUR}'}}"
    "function el(tag,cls,text){var e=document.createElement(tag);if(cls)e.className=cls;"
    "if(text!==undefined)e.textContent=text;return e}"
    "function swatch(l){var i=el('i');i.style.background=colour(l);return i}"
    "function showKey(labels){var key=document.querySelector('.key');"
    "if(key.dataset.labels===labels.join(','))return;key.dataset.labels=labels.join(',');key.textContent='';"
    "labels.forEach(function(l){var li=el('li');li.appendChild(swatch(l));li.appendChild(document.createTextNode(l));"
    "key.appendChild(li)})}"
    # one cell per second of the last minute, runs of a label merged: [second, label] pairs in, a strip out
    "function historyStrip(seconds,now){var slots=new Array(HISTORY_S).fill(null),runs=[],n=0;"
    "seconds.forEach(function(s){var i=HISTORY_S-1-(now-s[0]);if(i>=0&&i<HISTORY_S){slots[i]=s[1];n++}});"
    "slots.forEach(function(l){var last=runs[runs.length-1];if(last&&last[0]===l)last[1]++;else runs.push([l,1])});"
    "var strip=el('div','hist');strip.dataset.seconds=n;strip.title='smoothed expression, last '+HISTORY_S+' s';"
    "runs.forEach(function(r){var i=el('i');i.style.flex=r[1];if(r[0]){i.style.background=colour(r[0]);"
    "i.title=r[0]+', '+r[1]+' s'}strip.appendChild(i)});return strip}"
    "function showFace(f,labels,history,now){var li=el('li','face'),who=el('div','who');li.dataset.track=f.track;"
    "who.appendChild(swatch(f.emotion));who.appendChild(el('span','label','#'+f.track+' '+f.emotion+' '"
    "+f.confidence.toFixed(2)));li.appendChild(who);f.probabilities.forEach(function(p,i){var row=el('div','p'),"
    "b=el('span','b'),fill=el('i');fill.style.width=(100*p).toFixed(1)+'%';fill.style.background=colour(labels[i]);"
    "b.appendChild(fill);row.appendChild(el('span','n',labels[i]));row.appendChild(b);"
    "row.appendChild(el('span','v',Math.round(100*p)+'%'));li.appendChild(row)});"
    "if(f.track){li.appendChild(historyStrip(history[f.track]||[],now));var axis=el('div','axis');"
    "axis.appendChild(el('span','','-'+HISTORY_S+' s'));axis.appendChild(el('span','','now'));li.appendChild(axis)}"
    "return li}"
    "function showCamera(fig,c,labels,now){fig.querySelector('.rate').textContent="
    "c.fps.toFixed(1)+' FPS \u00b7 '+(c.latency_ms===null?'-':c.latency_ms)+' ms end to end';"
    "var ol=fig.querySelector('.faces');ol.textContent='';c.faces.forEach(function(f){"
    "ol.appendChild(showFace(f,labels,c.history||{},now))});var strip=fig.querySelector('.strip');strip.textContent='';"
    "c.mix.forEach(function(m){var col=el('i'),n=0;for(var k in m)n+=m[k];labels.forEach(function(l){if(m[l]){"
    "var b=el('b');b.style.height=(100*m[l]/n)+'%';b.style.background=colour(l);col.appendChild(b)}});"
    "strip.appendChild(col)})}"
    "function show(s){if(s.labels.length)showKey(s.labels);"
    "for(var cam in s.cameras){var fig=document.getElementById('cam-'+cam);if(fig)showCamera(fig,s.cameras[cam],"
    "s.labels,s.now)}}"
    "function poll(){fetch('/stats.json').then(function(r){return r.json()}).then(show)"
    ".catch(function(e){document.querySelectorAll('.rate').forEach(function(r){"
    "r.textContent='figures unavailable: '+e})}).then(function(){setTimeout(poll,1000)})}"
)
# Each <img> reports its stream's state in its caption; a failed stream is retried every 3 s.
# A click on a camera shows it large, with its figures beside it; another click or Esc goes back.
_PAGE_SCRIPT = (
    "function setState(img,cls,text){var s=img.parentNode.querySelector('figcaption span');"
    "s.className=cls;s.textContent=text}"
    "function streamUp(img){setState(img,'live','live')}"
    "function streamDown(img){setState(img,'down','stream down, retrying');"
    "setTimeout(function(){img.src=img.src.split('?')[0]+'?retry='+Date.now()},3000)}"
    "function enlarge(fig){var big=document.querySelector('figure.big');if(big)big.classList.remove('big');"
    "if(fig&&fig!==big)fig.classList.add('big');document.body.classList.toggle('zoomed',!!(fig&&fig!==big))}"
    "document.addEventListener('keydown',function(e){if(e.key==='Escape')enlarge(null)});"
)


def legend(labels: Sequence[str]) -> str:
    """The colour key: each expression's swatch and name (the page redraws it for a model with other labels)."""
    return "".join(
        f'<li><i style="background:{COLOURS.get(label, OTHER_COLOUR)}"></i>{html.escape(label)}</li>'
        for label in labels
    )


def index_page(cameras: Sequence[str], stats: dict[str, Any] | None = None) -> bytes:
    """The page; ``stats`` (``Board.snapshot``) is drawn as it loads, so the figures are there at once,
    not after the first poll of /stats.json (a second, or more on a loaded machine)."""
    first = json.dumps(stats or {"labels": [], "now": 0, "cameras": {}}).replace("<", "\\u003c")  # no </script>
    figures = "\n".join(
        f'<figure id="cam-{html.escape(c)}"><figcaption>{html.escape(c)} <span>waiting for frames</span></figcaption>'
        f'<img src="/stream/{html.escape(c)}.mjpg" alt="camera {html.escape(c)}" title="click: large / back" '
        'onload="streamUp(this)" onerror="streamDown(this)" onclick="enlarge(this.parentNode)">'
        '<div class="stats"><span class="rate">waiting for results</span><ol class="faces"></ol>'
        '<div class="strip" title="emotion mix over the last minute"></div>'
        f'<div class="axis"><span>emotion mix, last {MIX_SECONDS} s</span><span>now</span></div></div></figure>'
        for c in cameras
    )
    count = f"{len(cameras)} camera{'s' if len(cameras) != 1 else ''}"
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>emopipe live ({count})</title><style>{_PAGE_STYLE}</style>"
        f"<script>{_PAGE_SCRIPT}{_STATS_SCRIPT}</script></head>"
        f"<body><header><h1>emopipe live <small>{count}, annotated frames</small></h1>"
        f'<ul class="key" data-labels="{",".join(EMOTIONS)}">{legend(EMOTIONS)}</ul>'
        '<span class="hint">click a camera to enlarge it; Esc goes back</span></header>'
        f"<main>{figures or '<p>no cameras yet</p>'}</main><script>show({first});poll()</script></body></html>"
    ).encode()


def make_handler(store: FrameStore) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = CLIENT_TIMEOUT_S  # a client that stops reading this long is dropped (its write times out)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]  # the page retries a failed stream with a ?retry=... query
            if path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", index_page(store.cameras, store.board.snapshot()))
                return
            if path == "/stats.json":
                self._send(200, "application/json", json.dumps(store.board.snapshot()).encode())
                return
            match = _PATH.match(path)
            if match is None or (match.group(1) == "stream") != (match.group(3) == "mjpg"):
                self._send(404, "text/plain", f"not found: {path}\n".encode())
                return
            if match.group(2) not in store.cameras:  # answered at once: no thread waits on a camera no one has
                self._send(404, "text/plain", f"no camera {match.group(2)}\n".encode())
                return
            if match.group(1) == "snapshot":
                self._snapshot(match.group(2))
            else:
                self._stream(match.group(2))

        def _snapshot(self, camera: str) -> None:
            store.ask(camera)
            entry = store.latest(camera)
            if entry is not None:  # frames may not have been encoded while no one looked
                entry = store.wait_newer(camera, entry[0], timeout=1.0) or entry
            if entry is None:
                self._send(503, "text/plain", f"no frame from camera {camera} yet\n".encode())
                return
            self._send(200, "image/jpeg", entry[1])

        def _stream(self, camera: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            version = 0
            store.watch(camera, 1)
            try:
                while not store.closed:
                    entry = store.wait_newer(camera, version, timeout=1.0)
                    if entry is None:
                        if self._client_left():
                            raise ConnectionResetError("the client closed the connection")
                        continue  # no new frame within a second; check for shutdown and the client
                    version, jpeg = entry
                    self.wfile.write(
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                    )
                    self.wfile.write(jpeg)
                    self.wfile.write(b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                log.debug("viewer client left stream %s", camera)
            except TimeoutError:
                log.info("viewer client of stream %s stopped reading for %.0f s; dropped", camera, CLIENT_TIMEOUT_S)
            finally:
                store.watch(camera, -1)

        def _client_left(self) -> bool:
            """Whether the client hung up (its side of the socket reads as closed): a stream
            with no new frame would otherwise never write, and never notice."""
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            try:
                return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                log.debug("viewer client hung up before its answer (%d, %s)", code, self.path)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("viewer: " + format, *args)

    return Handler


BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
    b"Connection: close\r\n\r\ntoo many viewer clients; try again later\n"
)


class BoundedServer(ThreadingHTTPServer):
    """A thread per client up to ``max_clients`` at once; a client over that is answered 503
    from the accepting thread at once and closed, so no number of clients (streams left open,
    connections that never send a request) takes more threads or sockets than the cap."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_clients: int) -> None:
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(max_clients)
        self.clients = Gauge("emopipe_viewer_clients", "Viewer connections being served.", registry=None)
        self.refused = prometheus_client.Counter(
            "emopipe_viewer_refused_total", "Viewer connections refused: too many.", registry=None
        )

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused.inc()
            log.debug("viewer: refused a client: too many at once")
            try:
                request.settimeout(0.5)
                request.sendall(BUSY)
            except OSError as exc:
                log.debug("viewer: a refused client hung up first: %s", exc)
            self.shutdown_request(request)
            return
        self.clients.inc()
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.clients.dec()
            self.slots.release()


class Viewer:
    def __init__(
        self,
        store: FrameStore,
        host: str,
        port: int,
        max_clients: int = MAX_CLIENTS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        try:
            self.server = BoundedServer((host, port), make_handler(store), max_clients)
        except OSError as exc:
            raise OSError(f"cannot serve the viewer on {host}:{port}: {exc.strerror or exc}") from exc
        if registry is not None:
            registry.register(self.server.clients)
            registry.register(self.server.refused)
        self.thread = threading.Thread(target=self.server.serve_forever, name="viewer", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.store.close()
        self.server.shutdown()
        self.server.server_close()
