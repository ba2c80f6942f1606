"""``emopipe report EVENTS [--tracks TRACKS] --out report.html``: one self-contained HTML page
of how each camera's faces looked over a run, drawn with matplotlib (the ``report`` extra).

Per camera: the mix of smoothed expressions over time (stacked shares of the faces seen in
each time bin), one strip per face track (its smoothed label over time, and a line of that
label's confidence) and a table of the tracks (first seen, duration, dominant expression,
shares). The plots are PNGs embedded as base64, so the page needs nothing else; the colours
are the live viewer's (``emopipe.labels.COLOURS``).

EVENTS and TRACKS are what ``emopipe run --events/--tracks`` wrote, as JSON lines or CSV
(told apart by their first line). A file that is missing, empty or has a malformed line is
an error that names the file and the line (exit 2).
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emopipe.labels import COLOURS, OTHER_COLOUR
from emopipe.service import EXIT_CONFIG

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: the mix's time bins: the shortest of these that gives at most MIX_BINS bins
BIN_STEPS_S = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
MIX_BINS = 60
#: a track unseen for this many of its camera's frame intervals has a gap in its strip
GAP_FRAMES = 3
PLOT_WIDTH_IN = 10.0
DPI = 100
INSTALL_HINT = "emopipe report needs matplotlib: pip install 'emopipe[report]' (./run report installs it)"


class InputError(ValueError):
    """A file the report cannot read; the message names the file and, where there is one, the line."""


@dataclass(frozen=True)
class Face:
    """One face of one frame, as the report uses it: its track's smoothed label and confidence."""

    camera: str
    ts: float
    track: int
    label: str
    confidence: float


@dataclass
class Events:
    faces: list[Face] = field(default_factory=list)
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # camera -> first and last frame time
    frames: Counter[str] = field(default_factory=Counter)  # camera -> frames (CSV: those with a face)
    faces_only: bool = False  # CSV: a frame without a face has no row

    def add_frame(self, camera: str, ts: float) -> None:
        first, last = self.spans.get(camera, (ts, ts))
        self.spans[camera] = (min(first, ts), max(last, ts))
        self.frames[camera] += 1


@dataclass(frozen=True)
class TrackSummary:
    camera: str
    track: int
    first_seen: float
    seconds: float
    frames: int
    shares: dict[str, float]  # smoothed label -> share of the track's frames

    @property
    def dominant(self) -> str:
        return max(self.shares, key=lambda label: self.shares[label]) if self.shares else "-"


# ---------------------------------------------------------------- reading


def read_text(path: Path) -> list[str]:
    """The file's lines; InputError if it is missing, empty or not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{path} line {line}: not UTF-8 text") from exc
    if not text.strip():
        raise InputError(f"{path}: the file is empty")
    return text.splitlines()


def is_csv(path: Path, lines: list[str]) -> bool:
    """JSON lines start with ``{``; the CSV files with their header, whose first column is ``camera``."""
    first = lines[0].lstrip()
    if first.startswith("{"):
        return False
    if first.split(",", 1)[0].strip('"') == "camera":
        return True
    raise InputError(f"{path} line 1: neither a JSON object nor a CSV header starting with 'camera': {first[:60]!r}")


def _value(record: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """``record[key]``, checked to be a ``kind`` (``float``: any finite number)."""
    if key not in record:
        raise InputError(f"{where}: no {key!r}")
    value = record[key]
    ok = isinstance(value, (int, float)) and math.isfinite(value) if kind is float else isinstance(value, kind)
    if not ok or (isinstance(value, bool) and kind is not bool):
        raise InputError(f"{where}: {key!r} is {value!r}, not {'a number' if kind is float else kind.__name__}")
    return value


def _json_records(path: Path, lines: list[str]) -> Iterable[tuple[str, dict[str, Any]]]:
    for number, line in enumerate(lines, start=1):
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not JSON ({exc.msg}, column {exc.colno})") from exc
        if not isinstance(record, dict):
            raise InputError(f"{where}: not a JSON object")
        yield where, record


def _csv_records(path: Path, lines: list[str], required: Sequence[str]) -> Iterable[tuple[str, dict[str, str]]]:
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    missing = [name for name in required if name not in header]
    if missing:
        raise InputError(f"{path} line 1: the header has no column {', '.join(missing)}")
    for row in reader:
        where = f"{path} line {reader.line_num}"
        extra = row.get(None) or []  # DictReader puts surplus fields under None
        filled = sum(1 for key, value in row.items() if key is not None and value is not None)
        if extra or filled < len(header):
            raise InputError(f"{where}: {filled + len(extra)} columns where the header has {len(header)}")
        yield where, row


def _csv_value(row: dict[str, str], key: str, kind: type, where: str) -> Any:
    text = row[key]
    try:
        value = kind(text)
    except ValueError as exc:
        raise InputError(f"{where}: {key} {text!r} is not {'a number' if kind is float else 'an integer'}") from exc
    if kind is float and not math.isfinite(value):
        raise InputError(f"{where}: {key} {text!r} is not a finite number")
    return value


def read_events(path: Path) -> Events:
    """The faces of an ``--events`` file (JSON lines or CSV)."""
    lines = read_text(path)
    return _csv_events(path, lines) if is_csv(path, lines) else _json_events(path, lines)


def _json_events(path: Path, lines: list[str]) -> Events:
    events = Events()
    for where, record in _json_records(path, lines):
        camera = _value(record, "camera", str, where)
        _value(record, "frame", int, where)
        ts = _value(record, "ts", float, where)
        events.add_frame(camera, ts)
        for i, face in enumerate(_value(record, "faces", list, where)):
            at = f"{where}, face {i}"
            if not isinstance(face, dict):
                raise InputError(f"{at}: not a JSON object")
            smoothed = _value(face, "smoothed", dict, at)
            events.faces.append(
                Face(
                    camera,
                    ts,
                    _value(face, "track", int, at),
                    _value(smoothed, "emotion", str, f"{at}, smoothed"),
                    _value(smoothed, "confidence", float, f"{at}, smoothed"),
                )
            )
    return events


EVENT_COLUMNS = ("camera", "frame", "ts", "track", "smoothed_emotion", "smoothed_confidence")


def _csv_events(path: Path, lines: list[str]) -> Events:
    events = Events(faces_only=True)
    seen: set[tuple[str, int]] = set()
    for where, row in _csv_records(path, lines, EVENT_COLUMNS):
        camera, ts = row["camera"], _csv_value(row, "ts", float, where)
        frame = _csv_value(row, "frame", int, where)
        if (camera, frame) not in seen:
            seen.add((camera, frame))
            events.add_frame(camera, ts)
        track = _csv_value(row, "track", int, where)
        confidence = _csv_value(row, "smoothed_confidence", float, where)
        events.faces.append(Face(camera, ts, track, row["smoothed_emotion"], confidence))
    return events


def read_tracks(path: Path) -> list[TrackSummary]:
    """The summaries of a ``--tracks`` file (JSON lines or CSV)."""
    lines = read_text(path)
    return _csv_tracks(path, lines) if is_csv(path, lines) else _json_tracks(path, lines)


def _json_tracks(path: Path, lines: list[str]) -> list[TrackSummary]:
    tracks = []
    for where, record in _json_records(path, lines):
        shares = _value(record, "emotions", dict, where)
        for label in shares:
            _value(shares, label, float, f"{where}, emotions")
        tracks.append(
            TrackSummary(
                _value(record, "camera", str, where),
                _value(record, "track", int, where),
                _value(record, "first_seen", float, where),
                _value(record, "seconds", float, where),
                _value(record, "frames", int, where),
                {label: float(share) for label, share in shares.items()},
            )
        )
    return tracks


TRACK_COLUMNS = ("camera", "track", "first_seen", "seconds", "frames")


def _csv_tracks(path: Path, lines: list[str]) -> list[TrackSummary]:
    tracks = []
    for where, row in _csv_records(path, lines, TRACK_COLUMNS):
        labels = [name.removeprefix("share_") for name in row if name.startswith("share_")]
        tracks.append(
            TrackSummary(
                row["camera"],
                _csv_value(row, "track", int, where),
                _csv_value(row, "first_seen", float, where),
                _csv_value(row, "seconds", float, where),
                _csv_value(row, "frames", int, where),
                {label: _csv_value(row, f"share_{label}", float, where) for label in labels},
            )
        )
    return tracks


def tracks_from_faces(faces: Iterable[Face]) -> list[TrackSummary]:
    """The tracks' summaries as ``--tracks`` would give them, from the events alone."""
    by_track: dict[tuple[str, int], list[Face]] = {}
    for face in faces:
        if face.track:
            by_track.setdefault((face.camera, face.track), []).append(face)
    summaries = []
    for (camera, track), seen in by_track.items():
        counts = Counter(face.label for face in seen)
        first, last = min(f.ts for f in seen), max(f.ts for f in seen)
        shares = {label: count / len(seen) for label, count in counts.items()}
        summaries.append(TrackSummary(camera, track, first, last - first, len(seen), shares))
    return sorted(summaries, key=lambda t: (t.camera, t.first_seen, t.track))


# ---------------------------------------------------------------- what to draw


def label_order(faces: Iterable[Face], tracks: Iterable[TrackSummary]) -> list[str]:
    """The viewer's labels in its order, then any other label met, in the order met."""
    seen = dict.fromkeys([f.label for f in faces] + [label for t in tracks for label in t.shares])
    return list(COLOURS) + [label for label in seen if label not in COLOURS]


def colour(label: str) -> str:
    return COLOURS.get(label, OTHER_COLOUR)


def bin_width(duration_s: float) -> float:
    """The shortest of ``BIN_STEPS_S`` that cuts ``duration_s`` into at most ``MIX_BINS`` bins."""
    return next((step for step in BIN_STEPS_S if duration_s / step <= MIX_BINS), BIN_STEPS_S[-1])


def mix(faces: Sequence[Face], start: float, width: float, bins: int, labels: Sequence[str]) -> list[list[float]]:
    """Per label, per bin: the share of the bin's faces with that smoothed label (0 where no face)."""
    counts = [Counter[str]() for _ in range(bins)]
    for face in faces:
        counts[min(bins - 1, int((face.ts - start) / width))][face.label] += 1
    return [[c[label] / max(1, sum(c.values())) for c in counts] for label in labels]


def frame_interval(faces: Sequence[Face]) -> float:
    """The median time between a camera's distinct face times (what a strip's last run lasts)."""
    times = sorted({f.ts for f in faces})
    steps = sorted(b - a for a, b in zip(times, times[1:], strict=False) if b > a)
    return steps[len(steps) // 2] if steps else 0.04


def pieces(track: Sequence[Face], interval: float) -> list[list[Face]]:
    """A track's faces in time order, split wherever it went unseen for more than ``GAP_FRAMES`` frame intervals."""
    out: list[list[Face]] = []
    for face in sorted(track, key=lambda f: f.ts):
        if out and face.ts - out[-1][-1].ts <= GAP_FRAMES * interval:
            out[-1].append(face)
        else:
            out.append([face])
    return out


def runs(track: Sequence[Face], interval: float) -> list[tuple[float, float, str]]:
    """A track's strip: ``(start, end, label)`` per run of one smoothed label; a face lasts until
    the next one of its piece, the last one of a piece one frame interval."""
    out: list[tuple[float, float, str]] = []
    for piece in pieces(track, interval):
        for face, after in zip(piece, [*piece[1:], None], strict=True):
            end = after.ts if after is not None else face.ts + interval
            if out and out[-1][2] == face.label and out[-1][1] == face.ts:
                out[-1] = (out[-1][0], end, face.label)
            else:
                out.append((face.ts, end, face.label))
    return out


# ---------------------------------------------------------------- plots


@dataclass(frozen=True)
class Timeline:
    """A camera's time axis, the same for its mix and every one of its strips, so they line up."""

    start: float
    bin_s: float
    bins: int

    @property
    def extent(self) -> float:
        return self.bin_s * self.bins


def timeline(span: tuple[float, float], interval: float) -> Timeline:
    """From the first frame to one frame interval past the last, in whole mix bins."""
    length = span[1] - span[0] + interval
    width = bin_width(length)
    return Timeline(span[0], width, max(1, math.ceil(length / width - 1e-9)))


def new_figure(height_in: float, bottom_in: float) -> Figure:
    """A matplotlib figure drawn off screen (no pyplot: no global state, no display); every plot
    has the same left and right margins, so the time axes of a camera's plots line up."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PLOT_WIDTH_IN, height_in), dpi=DPI)
    fig.subplots_adjust(left=0.07, right=0.87, bottom=bottom_in / height_in, top=1 - 0.1 / height_in, hspace=0.15)
    return fig


def png_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plot_mix(faces: Sequence[Face], time: Timeline, labels: Sequence[str]) -> Figure:
    """The stacked shares of the smoothed labels per time bin, with a legend."""
    shares = mix(faces, time.start, time.bin_s, time.bins, labels)
    fig = new_figure(2.8, bottom_in=0.5)
    ax = fig.subplots()
    edges = [i * time.bin_s for i in range(time.bins + 1)]
    bottom = [0.0] * time.bins
    for label, row in zip(labels, shares, strict=True):
        top = [b + s for b, s in zip(bottom, row, strict=True)]
        ax.stairs(top, edges, baseline=bottom, fill=True, color=colour(label), label=label)
        bottom = top
    ax.set_xlim(0, time.extent)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"seconds since the first frame (bins of {time.bin_s:g} s)")
    ax.set_ylabel("share of faces")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    return fig


def plot_track(track: Sequence[Face], time: Timeline, interval: float) -> Figure:
    """A track's smoothed label as coloured runs over a line of that label's confidence (broken where unseen)."""
    fig = new_figure(1.3, bottom_in=0.3)
    strip, line = fig.subplots(2, 1, sharex=True, height_ratios=[1, 2.5])
    for run_start, run_end, label in runs(track, interval):
        strip.broken_barh([(run_start - time.start, run_end - run_start)], (0, 1), color=colour(label))
    strip.set_yticks([])
    strip.set_ylim(0, 1)
    for piece in pieces(track, interval):
        xs = [f.ts - time.start for f in piece]
        line.plot(xs, [f.confidence for f in piece], color="#333333", linewidth=1, marker="." if len(xs) == 1 else "")
    line.set_ylim(0, 1)
    line.set_yticks([0, 0.5, 1])
    line.set_ylabel("confidence", fontsize="small")
    line.set_xlim(0, time.extent)
    return fig


# ---------------------------------------------------------------- the page

STYLE = (
    "body{font-family:sans-serif;margin:24px;color:#222;max-width:1040px}"
    "h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{font-size:1em;margin:1em 0 .3em}"
    "img{display:block;max-width:100%}figure{margin:0 0 6px}figcaption{font-size:.85em;color:#555}"
    ".legend span{display:inline-block;margin-right:14px}.legend i,.shares i{display:inline-block}"
    ".legend i{width:12px;height:12px;margin-right:4px;vertical-align:-1px}"
    "table{border-collapse:collapse;font-size:.9em}"
    "td,th{padding:3px 10px;text-align:right;border-bottom:1px solid #eee}"
    "td.l,th.l{text-align:left}.shares{display:inline-flex;width:160px;height:10px;margin-right:6px;"
    "vertical-align:middle;background:#eee}.shares i{height:10px}.note{color:#555}"
)


def legend_html(labels: Sequence[str]) -> str:
    items = "".join(f'<span><i style="background:{colour(lb)}"></i>{html.escape(lb)}</span>' for lb in labels)
    return f'<p class="legend">{items}</p>'


def clock(ts: float) -> str:
    """Epoch seconds as UTC time; a media time (seconds into a file) as it is."""
    if ts > 1e8:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{ts:.2f} s"


def shares_html(shares: dict[str, float], labels: Sequence[str]) -> str:
    ordered = [(label, shares[label]) for label in labels if shares.get(label, 0) > 0]
    bar = "".join(f'<i style="width:{100 * s:.1f}%;background:{colour(lb)}"></i>' for lb, s in ordered)
    text = ", ".join(f"{html.escape(lb)} {100 * s:.0f}%" for lb, s in sorted(ordered, key=lambda x: -x[1]))
    return f'<span class="shares">{bar}</span>{text}'


def table_html(tracks: Sequence[TrackSummary], start: float, labels: Sequence[str]) -> str:
    """The camera's tracks: first seen (seconds since its first frame), duration, frames, dominant label, shares."""
    head = (
        "<tr><th>track</th><th>first seen (s)</th><th>duration (s)</th><th>frames</th>"
        '<th class="l">dominant</th><th class="l">shares of its frames</th></tr>'
    )
    rows = "".join(
        f'<tr data-track="{t.track}"><td>{t.track}</td><td>{t.first_seen - start:.2f}</td><td>{t.seconds:.2f}</td>'
        f'<td>{t.frames}</td><td class="l">{html.escape(t.dominant)}</td>'
        f'<td class="l">{shares_html(t.shares, labels)}</td></tr>'
        for t in sorted(tracks, key=lambda t: (t.first_seen, t.track))
    )
    return f'<table class="tracks">{head}{rows}</table>'


def faces_by_track(faces: Iterable[Face]) -> dict[int, list[Face]]:
    """A camera's tracked faces per track, the tracks in the order they were first seen."""
    by_track: dict[int, list[Face]] = {}
    for face in sorted(faces, key=lambda f: f.ts):
        if face.track:
            by_track.setdefault(face.track, []).append(face)
    return by_track


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def camera_html(camera: str, events: Events, tracks: Sequence[TrackSummary], labels: Sequence[str]) -> str:
    """One camera's section: its mix, a strip per track, its table of tracks."""
    faces = [f for f in events.faces if f.camera == camera]
    span = events.spans.get(camera) or (
        min(t.first_seen for t in tracks),
        max(t.first_seen + t.seconds for t in tracks),
    )
    interval = frame_interval(faces)
    time = timeline(span, interval)
    by_track = faces_by_track(faces)
    name = html.escape(camera)
    frames = plural(events.frames[camera], "frame") + (" with a face" if events.faces_only else "")
    parts = [
        f'<section class="camera" data-camera="{name}"><h2>Camera {name}</h2>',
        f'<p class="note">from {clock(span[0])}, {span[1] - span[0]:.1f} s: {frames}, '
        f"{plural(len(faces), 'face')}, {plural(len(by_track), 'track')}</p>",
    ]
    if faces:
        parts.append(_figure(plot_mix(faces, time, labels), "mix", name, "expression mix over time"))
    parts.append("<h3>Tracks: smoothed expression and its confidence</h3>")
    for track, seen in by_track.items():
        caption = f"track {track}: {plural(len(seen), 'frame')}"
        parts.append(_figure(plot_track(seen, time, interval), "track", name, caption, f' data-track="{track}"'))
    if not by_track:
        parts.append('<p class="note">no tracked face</p>')
    parts.append(table_html(tracks, span[0], labels) if tracks else '<p class="note">no track summary</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _figure(fig: Figure, kind: str, camera: str, caption: str, attrs: str = "") -> str:
    return (
        f'<figure class="{kind}" data-camera="{camera}"{attrs}><img alt="{html.escape(caption)}" src="{png_uri(fig)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def render(events: Events, tracks: Sequence[TrackSummary], title: str) -> str:
    """The whole page, plots embedded."""
    labels = label_order(events.faces, tracks)
    cameras = list(dict.fromkeys([*events.spans, *(t.camera for t in tracks)]))
    sections = [camera_html(camera, events, [t for t in tracks if t.camera == camera], labels) for camera in cameras]
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{legend_html(labels)}"
        + "\n".join(sections)
        + "</body></html>\n"
    )


# ---------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("events", metavar="EVENTS", help="an --events file (JSON lines or CSV)")
    parser.add_argument("--tracks", metavar="TRACKS", help="its --tracks file (default: tracks from EVENTS)")
    parser.add_argument("--out", metavar="FILE", required=True, help="the HTML file to write")


def run(args: argparse.Namespace) -> int:
    events_path, out = Path(args.events), Path(args.out)
    tracks_path = Path(args.tracks) if args.tracks else None
    try:
        import matplotlib  # noqa: F401  (the report extra)
    except ImportError:
        print(f"emopipe: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        for given in (events_path, tracks_path):
            if given is not None and out.resolve() == given.resolve():
                raise InputError(f"--out {out} is the input {given}: refusing to overwrite it")
        events = read_events(events_path)
        tracks = read_tracks(tracks_path) if tracks_path else tracks_from_faces(events.faces)
        page = render(events, tracks, f"emopipe report: {events_path.name}")
        out.write_text(page, encoding="utf-8")
    except InputError as exc:
        print(f"emopipe report: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"emopipe report: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{out}: {len(events.spans)} camera(s), {len(events.faces)} faces, {len(tracks)} tracks")
    return 0
