"""sink: its one ordered input, the JSON lines, the drawing and the web viewer."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry

from emopipe import config as config_mod
from emopipe import messages
from emopipe import metrics as metrics_mod
from emopipe.config import SourceConfig
from emopipe.messages import Box, EndOfStream, FaceResult, Frame, Results
from helpers import (
    free_port,
    garbage_like,
    green_pixels,
    pipeline_toml,
    publisher,
    scrape_value,
    start_stage,
    stop,
    wait_for,
)
from services.sink.events import LineWriter, event
from services.sink.main import EXIT_INCOMPLETE, EXIT_SOURCE_INCOMPLETE, Sink
from services.sink.outputs import Outputs
from services.sink.progress import expected_frames, format_seconds
from services.sink.render import annotate, encode_jpeg
from services.sink.smoothing import Smoothed
from services.sink.stats import Board
from services.sink.viewer import FrameStore, Viewer

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def frame(seq: int) -> Frame:
    return Frame("cam0", seq, 100.0 + seq, np.zeros((60, 80, 3), np.uint8))


def results(seq: int, faces: int = 1) -> Results:
    probs = (0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.1)
    face = FaceResult(Box(10, 10, 30, 30), "happy", 0.9, probs)
    return Results("cam0", seq, 100.0 + seq, (face,) * faces, LABELS)


def sink_of(cfg: config_mod.Config, outputs: Outputs, events: LineWriter | None = None) -> Sink:
    return Sink(cfg, metrics_mod.create(CollectorRegistry(), "sink", cfg.cameras), events or LineWriter(None), outputs)


def two_cameras(**sections: dict[str, object]) -> config_mod.Config:
    return config_mod.from_dict(
        {"sources": [{"id": c, "uri": "clip.mp4"} for c in ("cam0", "cam1")], **sections}  # type: ignore[dict-item]
    )


@pytest.mark.parametrize("mode", ["live", "lossless"])
def test_sink_asks_for_a_cameras_pixels_only_until_its_first_and_while_a_viewer_watches_it(mode: str) -> None:
    cfg = two_cameras(pipeline={"mode": mode})
    store = FrameStore(cfg.cameras)
    sink = sink_of(cfg, Outputs(cfg.sink, cfg.cameras, store))
    plain = [b"results.", b"eos."]
    assert sink.topics() == [*plain, b"frame.cam0.", b"frame.cam1."]  # the viewer has no picture yet
    for camera in cfg.cameras:
        store.put(camera, b"jpeg")  # the first frame was drawn
    assert sink.topics() == plain  # nothing shows or records them: no pixels, lossless too
    store.watch("cam1", 1)  # a viewer opened cam1's stream
    assert sink.topics() == [*plain, b"frame.cam1."]
    store.watch("cam1", -1)
    assert sink.topics() == plain


def test_sink_asks_for_every_cameras_pixels_with_record_and_for_none_without_an_output() -> None:
    cfg = two_cameras(sink={"cameras": ["cam1"], "record": "out.mp4"})
    assert sink_of(cfg, Outputs(cfg.sink, ["cam1"], None)).topics() == [b"results.cam1.", b"eos.cam1.", b"frame.cam1."]
    cfg = two_cameras()
    assert sink_of(cfg, Outputs(cfg.sink, cfg.cameras, None)).topics() == [b"results.", b"eos."]
    nowhere = config_mod.from_dict({"sink": {"show": True}})  # no camera known here: every camera's
    assert sink_of(nowhere, Outputs(nowhere.sink, [], None)).topics() == [b"results.", b"eos.", b"frame."]


def test_sink_writes_each_result_as_it_comes_and_a_camera_is_done_with_its_end_of_stream(tmp_path: Path) -> None:
    cfg = two_cameras()
    events = LineWriter(tmp_path / "out.jsonl")
    sink = sink_of(cfg, Outputs(cfg.sink, cfg.cameras, None), events)
    for seq in range(3):
        sink.on_message(results(seq, faces=seq % 2), received=time.time())
    sink.on_message(EndOfStream("cam0", 3, 103.0), received=time.time())
    assert not sink.finished()  # cam1 has not ended
    sink.on_message(EndOfStream("cam1", 0, 0.0, unread=2), received=time.time())  # no frame read at all
    events.close()
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(e["camera"], e["frame"], len(e["faces"])) for e in lines] == [
        ("cam0", 0, 0),
        ("cam0", 1, 1),
        ("cam0", 2, 0),
    ]
    assert sink.finished() and (sink.states["cam0"].written, sink.states["cam0"].produced) == (3, 3)
    assert sink.unread == {"cam1": 2} and sink.exit_code() == EXIT_SOURCE_INCOMPLETE


def test_lossless_sink_exits_incomplete_when_a_frame_the_camera_produced_has_no_line() -> None:
    cfg = config_mod.from_dict({"sources": [{"id": "cam0", "uri": "clip.mp4"}]})
    sink = sink_of(cfg, Outputs(cfg.sink, cfg.cameras, None))
    sink.on_message(results(0), received=time.time())
    sink.on_message(results(2), received=time.time())  # capture gave frame 1 up
    sink.on_message(EndOfStream("cam0", 3, 103.0), received=time.time())
    assert sink.finished() and not sink.states["cam0"].complete
    assert sink.exit_code() == EXIT_INCOMPLETE


def test_sink_draws_the_frame_a_result_carries_and_writes_the_line_of_one_without() -> None:
    cfg = config_mod.from_dict({"pipeline": {"realtime": True}, "sources": [{"id": "cam0", "uri": "clip.mp4"}]})
    store = FrameStore(cfg.cameras)
    sink = sink_of(cfg, Outputs(cfg.sink, cfg.cameras, store))
    sink.on_message(results(0), received=time.time())  # no pixels: nothing to draw
    assert store.latest("cam0") is None and sink.states["cam0"].written == 1
    sink.on_message(dataclasses.replace(results(1), frame=frame(1)), received=time.time())
    version, jpeg = store.latest("cam0") or (0, b"")
    drawn = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert drawn is not None and drawn.shape == (60, 80, 3) and version == 1
    assert green_pixels(drawn) > 50  # the face's box
    assert sink.states["cam0"].written == 2


def test_events_are_one_json_object_per_frame_in_the_specified_shape(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    writer = LineWriter(path)
    writer.write(event(results(0, faces=1), [Smoothed("sad", 0.5)]))
    writer.write(event(results(1, faces=0), []))
    writer.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {
            "camera": "cam0",
            "frame": 0,
            "ts": 100.0,
            "faces": [
                {
                    "box": [10, 10, 30, 30],
                    "track": 0,
                    "emotion": "happy",
                    "confidence": 0.9,
                    "probabilities": [0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.1],  # the model's label order
                    "smoothed": {"emotion": "sad", "confidence": 0.5},
                }
            ],
        },
        {"camera": "cam0", "frame": 1, "ts": 101.0, "faces": []},
    ]


def test_annotation_draws_the_box_and_label_and_leaves_the_input_untouched() -> None:
    image = np.full((60, 80, 3), 50, np.uint8)
    out = annotate(image, results(0))
    assert int(image.max()) == 50  # the received frame is read-only memory: never drawn on
    assert tuple(out[25, 10]) == (0, 220, 0)  # left edge of the box
    assert np.array_equal(out[55:, 60:], image[55:, 60:])  # far from the box: unchanged


@pytest.fixture
def viewer():  # type: ignore[no-untyped-def]
    store = FrameStore(["cam0"])
    view = Viewer(store, "127.0.0.1", free_port())
    view.start()
    yield store, view
    view.close()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def test_viewer_serves_index_snapshot_and_mjpeg_stream(viewer) -> None:  # type: ignore[no-untyped-def]
    store, view = viewer
    status, ctype, body = get(view.url)
    assert status == 200 and ctype.startswith("text/html") and b'src="/stream/cam0.mjpg"' in body
    assert get(view.url + "snapshot/cam0.jpg")[0] == 503  # nothing drawn yet
    image = annotate(np.full((60, 80, 3), 50, np.uint8), results(0))
    store.put("cam0", encode_jpeg(image, 90))
    status, ctype, body = get(view.url + "snapshot/cam0.jpg")
    decoded = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert status == 200 and ctype == "image/jpeg" and decoded is not None and decoded.shape == (60, 80, 3)
    with urllib.request.urlopen(view.url + "stream/cam0.mjpg", timeout=5) as resp:
        assert resp.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=emopipeframe"
        head = resp.read(200)
    assert head.startswith(b"--emopipeframe\r\nContent-Type: image/jpeg\r\n")
    assert get(view.url + "stream/../etc.mjpg")[0] == 404


def test_viewer_ignores_the_query_the_page_adds_when_it_retries_a_stream(viewer) -> None:  # type: ignore[no-untyped-def]
    store, view = viewer
    store.put("cam0", encode_jpeg(np.full((60, 80, 3), 50, np.uint8), 90))
    assert get(view.url + "snapshot/cam0.jpg?retry=1700000000000")[0] == 200
    with urllib.request.urlopen(view.url + "stream/cam0.mjpg?retry=1700000000000", timeout=5) as resp:
        assert resp.read(16) == b"--emopipeframe\r\n"
    assert get(view.url + "?retry=1")[0] == 200
    assert get(view.url + "stream/../etc.mjpg?retry=1")[0] == 404


def tracked(camera: str, ts: float, tracks: dict[int, str]) -> tuple[Results, list[Smoothed]]:
    """A result with one face per track, and each face's smoothed label as given."""
    faces = tuple(
        FaceResult(Box(10 * t, 10, 30, 30), label, 0.9, tuple(0.9 if lb == label else 0.0 for lb in LABELS), track=t)
        for t, label in tracks.items()
    )
    res = Results(camera, int(ts * 10), ts, faces, LABELS)
    return res, [Smoothed(f.emotion, 0.9, f.probabilities) for f in faces]


def test_board_keeps_each_tracks_smoothed_label_per_second_for_60_s_and_forgets_ended_tracks() -> None:
    board = Board()
    t0 = 1000.0
    for i in range(900):  # 90 s at 10 lines a second: track 1 happy, then sad from 80 s on; track 2 from 85 s
        now = t0 + i / 10
        labels = {1: "happy" if i < 800 else "sad"} | ({2: "fear"} if i >= 850 else {})
        board.record(*tracked("cam0", now, labels), now=now)
    board.record(*tracked("cam1", t0 + 89.5, {1: "angry"}), now=t0 + 89.5)
    board.record(*tracked("cam0", t0 + 89.95, {1: "surprise", 0: "neutral"}), now=t0 + 89.95)  # untracked: none
    snap = board.snapshot(now=t0 + 89.99)
    assert snap["now"] == 1089
    history = snap["cameras"]["cam0"]["history"]
    assert list(history) == ["1", "2"]
    assert [t for t, _ in history["1"]] == list(range(1030, 1090))  # the last 60 s only, oldest first
    assert [label for _, label in history["1"]] == ["happy"] * 50 + ["sad"] * 10  # 1089: 9 sad, 1 surprise
    assert history["2"] == [[t, "fear"] for t in range(1085, 1090)]
    assert snap["cameras"]["cam1"]["history"] == {"1": [[1089, "angry"]]}  # track ids are per camera
    later = board.snapshot(now=t0 + 120)["cameras"]["cam0"]["history"]  # the minute moves on with the clock
    assert [t for t, _ in later["1"]] == list(range(1061, 1090)) and later["2"] == history["2"]
    board.end_track("cam0", 1)
    assert list(board.snapshot(now=t0 + 89.99)["cameras"]["cam0"]["history"]) == ["2"]
    assert board.snapshot(now=t0 + 89.99)["cameras"]["cam1"]["history"] == {"1": [[1089, "angry"]]}
    board.record(*tracked("cam0", t0 + 200, {3: "sad"}), now=t0 + 200)  # a track not ended by the sink ages out
    assert board.snapshot(now=t0 + 200)["cameras"]["cam0"]["history"] == {"3": [[1200, "sad"]]}
    assert {len(h) for h in board._history["cam0"].values()} == {1}  # memory: only what the strip shows


def test_sink_ends_a_tracks_viewer_history_when_the_track_ends() -> None:
    cfg = config_mod.from_dict({"pipeline": {"realtime": True}, "sources": [{"id": "cam0", "uri": "clip.mp4"}]})
    store = FrameStore(cfg.cameras)
    sink = Sink(
        cfg,
        metrics_mod.create(CollectorRegistry(), "sink", cfg.cameras),
        LineWriter(None),
        Outputs(cfg.sink, cfg.cameras, store),
    )
    start = time.time()
    for i in range(10):
        sink.emit(tracked("cam0", start + i / 10, {1: "happy", 2: "sad"})[0])
    assert sorted(store.board.snapshot()["cameras"]["cam0"]["history"]) == ["1", "2"]
    later = start + 1 + cfg.detect.track_timeout_s + 1  # track 1 unseen longer than the timeout: ended
    sink.emit(tracked("cam0", later, {2: "sad"})[0])
    history = store.board.snapshot()["cameras"]["cam0"]["history"]
    assert list(history) == ["2"] and {label for _, label in history["2"]} == {"sad"}


def test_progress_knows_the_total_of_files_and_folders_but_not_of_live_or_looped_sources(
    tmp_path: Path, carphone: Path, carphone_frames: list[np.ndarray]
) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), carphone_frames[i])
    (tmp_path / "notes.txt").write_text("not an image")
    assert expected_frames(SourceConfig(id="v", uri=str(carphone))) == len(carphone_frames)
    assert expected_frames(SourceConfig(id="f", uri=str(tmp_path))) == 3
    assert expected_frames(SourceConfig(id="l", uri=str(carphone), loop=True)) is None
    assert expected_frames(SourceConfig(id="w", uri="0")) is None
    assert expected_frames(SourceConfig(id="r", uri="rtsp://127.0.0.1:8554/cam")) is None
    assert (format_seconds(59.6), format_seconds(3725), format_seconds(float("nan"))) == ("1:00", "1:02:05", "?")


def test_a_line_left_unfinished_by_a_killed_sink_is_cut_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"frame":0}\n{"frame":1}\n{"fra')
    writer = LineWriter(path)
    writer.write({"frame": 2})
    writer.close()
    assert path.read_text() == '{"frame":0}\n{"frame":1}\n{"frame":2}\n'
    path.write_text('{"unfinished')
    LineWriter(path).close()
    assert path.read_text() == ""


def test_sink_process_writes_every_real_frame_among_garbage_and_mismatched_frames_and_counts_each(
    ipc_dir: Path, carphone: Path, zmq_ctx: zmq.Context
) -> None:
    """Its one input carries results alone and results with their frame (six parts); results
    that carry another frame's pixels are dropped as malformed, like any garbage."""
    port, events = free_port(), ipc_dir / "events.jsonl"
    config = ipc_dir / "c.toml"
    sink = {"metrics_port": port, "events": events}
    config.write_text(pipeline_toml(ipc_dir, [("cam0", carphone, False)], sink=sink))
    proc = start_stage("sink", config, ipc_dir / "sink.log")
    results_pub = publisher(zmq_ctx, f"ipc://{ipc_dir}/results")
    rng = np.random.default_rng(0)
    count, repeat = 20, 100
    try:
        for seq in range(count):
            good = messages.encode(
                dataclasses.replace(results(seq), frame=frame(seq)) if seq % 2 else results(seq), 1.0
            )
            results_pub.send_parts(good)
            other = messages.encode(dataclasses.replace(results(seq), frame=frame(seq + 1)), sent=time.time())
            for parts in [*garbage_like(good[:3], rng), other] * repeat:
                results_pub.send_parts(parts)
        malformed = 'emopipe_frames_dropped_total{reason="malformed",stage="sink"}'
        assert wait_for(lambda: scrape_value(port, malformed) == count * 5 * repeat, 30), (
            scrape_value(port, malformed),
            (ipc_dir / "sink.log").read_text()[-3000:],
        )
        results_pub.send(EndOfStream("cam0", count, 200.0))
        assert proc.wait(60) == 0, (ipc_dir / "sink.log").read_text()
    finally:
        stop(proc)
        results_pub.close()
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["frame"] for e in lines] == list(range(count))
    assert all(e["faces"][0]["emotion"] == "happy" for e in lines)
    log = (ipc_dir / "sink.log").read_text()
    assert 1 <= log.count("sink: dropped message") <= 8, log[-3000:]  # throttled: per reason, one per 10 s
