"""`emopipe report`: the HTML report of a real run's lines, read back as HTML, as PNGs and in headless Chromium.

Two complete runs of the real carphone video on two cameras (one writing JSON lines, one CSV);
the model reads carphone's one face as fear nearly throughout (a frame or two of another smoothed
label), which the plots must show in the viewer's colour for fear.

``EMOPIPE_SCREENSHOT=FILE ./test tests/test_report.py`` copies the browser's screenshot to FILE.
The README's docs/report.png is of a livelier clip (deploy/README.md, "emopipe report", says how it was made).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from test_viewer_browser import CHROMIUM, browse

from deploy import launcher
from emopipe.labels import COLOURS
from helpers import REPO, json_and_csv_runs

SOURCES = ("a", "b")
# Once the page has loaded, each image's natural size goes into an attribute --dump-dom shows.
SIZE_PROBE = (
    "<script>addEventListener('load',function(){document.querySelectorAll('img').forEach(function(i){"
    "i.setAttribute('data-natural',i.naturalWidth+'x'+i.naturalHeight)})})</script>"
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, carphone: Path, model_path: Path) -> dict[str, Path]:
    sources = [f"{camera}={carphone}" for camera in SOURCES]
    return json_and_csv_runs(tmp_path_factory.mktemp("report"), model_path, sources)


def report(*args: str) -> subprocess.CompletedProcess[str]:
    """``emopipe report ARGS`` as its own process."""
    command = [sys.executable, "-m", "deploy.launcher", "report", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def page(runs: dict[str, Path]) -> Path:
    out = runs["out.jsonl"].with_name("report.html")
    done = report(str(runs["out.jsonl"]), "--tracks", str(runs["tracks.jsonl"]), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{out}: 2 camera(s), 168 faces, 2 tracks"
    return out


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def sections(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section class="camera" data-camera="(\w+)">(.*?)</section>', html, re.S))


def figures(section: str, kind: str) -> list[tuple[str, str]]:
    """``(attributes, PNG base64)`` of each figure of ``kind``."""
    pattern = rf'<figure class="{kind}"([^>]*)><img alt="[^"]*" src="data:image/png;base64,([^"]+)">'
    return re.findall(pattern, section)


def colour_pixels(png_base64: str, label: str) -> int:
    """How many pixels of the PNG are exactly ``label``'s colour."""
    image = cv2.imdecode(np.frombuffer(base64.b64decode(png_base64), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    hexa = COLOURS[label].lstrip("#")
    bgr = [int(hexa[i : i + 2], 16) for i in (4, 2, 0)]
    return int(np.count_nonzero(np.all(image == bgr, axis=2)))


def test_report_has_per_camera_a_mix_one_strip_per_track_and_the_tracks_table(
    page: Path, runs: dict[str, Path]
) -> None:
    html = page.read_text()
    assert not re.search(r'(src|href)="(?!data:)', html), "the page must be self-contained"
    events, tracks = lines(runs["out.jsonl"]), lines(runs["tracks.jsonl"])
    assert set(sections(html)) == set(SOURCES)
    for camera, section in sections(html).items():
        assert len(figures(section, "mix")) == 1
        seen = {f["track"] for e in events if e["camera"] == camera for f in e["faces"]}
        strips = [re.search(r'data-track="(\d+)"', attrs) for attrs, _ in figures(section, "track")]
        assert sorted(int(m.group(1)) for m in strips if m) == sorted(seen) == [1]
        mine = [t for t in tracks if t["camera"] == camera]
        rows = re.findall(r'<tr data-track="(\d+)"><td>\d+</td><td>([\d.]+)</td><td>([\d.]+)</td><td>(\d+)</td>'
                          r'<td class="l">(\w+)</td>', section)  # fmt: skip
        assert rows == [
            (
                str(t["track"]),
                "0.00",
                f"{t['seconds']:.2f}",
                str(t["frames"]),
                max(t["emotions"], key=t["emotions"].get),
            )
            for t in mine
        ]
        assert rows[0][4] == "fear" and rows[0][3] == "84"


def test_report_plots_carphones_fear_in_the_viewers_colour_and_no_label_the_lines_lack(
    runs: dict[str, Path], page: Path
) -> None:
    events = lines(runs["out.jsonl"])
    for camera, section in sections(page.read_text()).items():
        shown = Counter(f["smoothed"]["emotion"] for e in events if e["camera"] == camera for f in e["faces"])
        assert shown.most_common(1)[0][0] == "fear" and shown["fear"] >= 0.9 * shown.total(), shown
        (_, mix), (_, strip) = figures(section, "mix")[0], figures(section, "track")[0]
        # the mix: fear fills every bin with a face (about 3 s of the 4 s plot, 0-1 high); a label
        # the lines lack shows only in the legend (a 20 x 7 px patch), one they have a frame of more
        assert colour_pixels(mix, "fear") > 80_000, camera
        assert colour_pixels(strip, "fear") > 4_000, camera
        for label in COLOURS.keys() - shown.keys():
            assert colour_pixels(mix, label) < 300 and colour_pixels(strip, label) == 0, (camera, label)
        for label in shown.keys() - {"fear"}:
            assert colour_pixels(mix, label) >= 300, (camera, label, shown)


def test_report_from_csv_lines_shows_the_same_tracks_as_from_json_lines(runs: dict[str, Path], page: Path) -> None:
    out = runs["out.csv"].with_name("report-csv.html")
    done = report(str(runs["out.csv"]), "--tracks", str(runs["tracks.csv"]), "--out", str(out))
    assert done.returncode == 0, done.stderr
    from_json, from_csv = sections(page.read_text()), sections(out.read_text())
    assert set(from_csv) == set(from_json)
    for camera in from_json:
        strips = [attrs for attrs, _ in figures(from_csv[camera], "track")]
        assert strips == [attrs for attrs, _ in figures(from_json[camera], "track")]
        table = re.search(r'<table class="tracks">.*?</table>', from_csv[camera])
        assert table and table.group(0) in from_json[camera]
        assert "84 frames with a face" in from_csv[camera] and "120 frames" in from_json[camera]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_browser_loads_every_plot_and_one_strip_per_track(page: Path, tmp_path: Path) -> None:
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", SIZE_PROBE + "</body>"))
    dom = browse(probed.as_uri(), tmp_path / "profile", "--dump-dom")
    sizes = re.findall(r'<img [^>]*data-natural="(\d+)x(\d+)"', dom)
    assert len(sizes) == len(re.findall(r"<img ", dom)) == 2 * 2  # per camera: its mix and its one track
    assert sorted({(int(w), int(h)) for w, h in sizes}) == [(1000, 130), (1000, 280)]
    for camera in SOURCES:
        assert len(re.findall(rf'<figure class="track" data-camera="{camera}" data-track="\d+">', dom)) == 1
    shot = tmp_path / "report.png"
    browse(page.as_uri(), tmp_path / "profile", "--window-size=1000,1300", f"--screenshot={shot}")
    image = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (1300, 1000)
    fear = np.array([int(COLOURS["fear"][i : i + 2], 16) for i in (5, 3, 1)])
    assert np.count_nonzero(np.abs(image.astype(int) - fear).max(axis=2) < 8) > 50_000, "no plot drawn"
    if os.environ.get("EMOPIPE_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["EMOPIPE_SCREENSHOT"])


def bad_input(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = launcher.main(["report", str(path), *args, "--out", str(path.with_name("r.html"))])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert not path.with_name("r.html").exists()
    return err.strip()


def test_bad_input_is_one_line_naming_the_file_and_line_and_exits_2(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.jsonl"
    assert bad_input(missing, capsys) == f"emopipe report: {missing}: No such file or directory"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert bad_input(empty, capsys) == f"emopipe report: {empty}: the file is empty"
    broken = tmp_path / "broken.jsonl"
    good = runs["out.jsonl"].read_text().splitlines()
    broken.write_text("\n".join(good[:2] + [good[2][:40]] + good[3:]) + "\n")
    assert bad_input(broken, capsys).startswith(f"emopipe report: {broken} line 3: not JSON (")
    no_faces = tmp_path / "no-faces.jsonl"
    no_faces.write_text(good[0] + "\n" + good[1].replace('"faces"', '"face"') + "\n")
    assert bad_input(no_faces, capsys) == f"emopipe report: {no_faces} line 2: no 'faces'"
    short = tmp_path / "short.csv"
    rows = runs["out.csv"].read_text().splitlines()
    short.write_text("\n".join(rows[:4] + [rows[4].rsplit(",", 3)[0]] + rows[5:]) + "\n")
    assert bad_input(short, capsys) == f"emopipe report: {short} line 5: 16 columns where the header has 19"
    assert bad_input(runs["out.csv"], capsys, "--tracks", str(empty)).endswith(f"{empty}: the file is empty")


def test_run_script_dispatches_report_and_keeps_run_options(runs: dict[str, Path], tmp_path: Path) -> None:
    """`./run report …` makes a report (with the report extra, installed by ./test), relative paths taken from
    where it is called; `./run --help` is still `run`'s."""
    shutil.copyfile(runs["out.jsonl"], tmp_path / "out.jsonl")
    run = [str(REPO / "run"), "report", "out.jsonl", "--out", "r.html"]
    done = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r.html").read_text().count('<figure class="track"') == 2
    usage = subprocess.run([REPO / "run", "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: emopipe run")
