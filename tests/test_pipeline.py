"""The whole pipeline: `emopipe run` starts the real stage processes on ipc:// sockets and the real video."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import zmq

from emopipe import bus, messages
from emopipe.labels import EMOTIONS
from emopipe.messages import EndOfStream, Results
from helpers import (
    REPO,
    alive,
    fetch,
    free_port,
    green_pixels,
    launch,
    pipeline_toml,
    reap,
    stage_pids,
    start_stage,
    stop,
    written_so_far,
)

RUN_TIMEOUT_S = 120


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def haar_reference(carphone_frames: list[np.ndarray]) -> list[bool]:
    """Per frame: does OpenCV's cascade alone (1.1, 5, 40x40, full frame) find a face?"""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]
    return [
        len(cascade.detectMultiScale(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), 1.1, 5, minSize=(40, 40))) > 0
        for f in carphone_frames
    ]


@pytest.fixture(scope="module")
def file_run(tmp_path_factory: pytest.TempPathFactory, carphone: Path, model_path: Path) -> Iterator[dict[str, Any]]:
    """One complete `emopipe run --source VIDEO --events FILE` of the real video, two cameras."""
    ipc = Path(tempfile.mkdtemp(prefix="ep-", dir="/tmp"))
    tmp = tmp_path_factory.mktemp("file_run")
    config = tmp / "c.toml"
    config.write_text(pipeline_toml(ipc, [], classify={"model": model_path}, sink={"progress_s": 0.5}))
    events, tracks, log = tmp / "out.jsonl", tmp / "tracks.jsonl", tmp / "run.log"
    started = time.monotonic()
    record = tmp / "annotated.mp4"
    sources = ["--source", f"a={carphone}", "--source", f"b={carphone}"]
    proc = launch(config, log, *sources, "--events", str(events), "--tracks", str(tracks), "--record", str(record))
    try:
        code = proc.wait(RUN_TIMEOUT_S)
        yield {
            "code": code,
            "events": read_events(events),
            "tracks": read_events(tracks),
            "log": log.read_text(),
            "seconds": time.monotonic() - started,
            "recordings": {cam: tmp / f"annotated.{cam}.mp4" for cam in ("a", "b")},
            "paths": {"events": events, "tracks": tracks, "record": record, "source": carphone},
        }
    finally:
        reap(proc, log)
        shutil.rmtree(ipc, ignore_errors=True)


def test_file_run_exits_0_by_itself_after_every_frame(file_run: dict[str, Any]) -> None:
    assert file_run["code"] == 0, file_run["log"][-3000:]
    print(f"two cameras x carphone: {len(file_run['events'])} lines in {file_run['seconds']:.1f} s")


def test_file_run_writes_one_line_per_frame_in_order_for_each_camera(
    file_run: dict[str, Any], carphone_frames: list[np.ndarray]
) -> None:
    for camera in ("a", "b"):
        frames = [e["frame"] for e in file_run["events"] if e["camera"] == camera]
        assert frames == list(range(len(carphone_frames))), f"camera {camera}"
    assert len(file_run["events"]) == 2 * len(carphone_frames)


def test_file_run_finds_faces_where_haar_alone_finds_them(file_run: dict[str, Any], haar_reference: list[bool]) -> None:
    lines = {e["frame"]: e for e in file_run["events"] if e["camera"] == "a"}
    reference = [i for i, found in enumerate(haar_reference) if found]
    agreed = [i for i in reference if lines[i]["faces"]]
    assert len(reference) >= 30  # the video shows a face
    assert len(agreed) >= 0.9 * len(reference), f"{len(agreed)}/{len(reference)}"
    print(f"faces in {len(agreed)}/{len(reference)} frames where plain Haar finds one")


def test_file_run_gives_every_face_a_model_label_and_a_confidence_in_0_1(file_run: dict[str, Any]) -> None:
    faces = [f for e in file_run["events"] for f in e["faces"]]
    assert faces
    for face in faces:
        assert set(face) == {"box", "track", "emotion", "confidence", "probabilities", "smoothed"}
        assert face["emotion"] in EMOTIONS and 0.0 <= face["confidence"] <= 1.0
        probs = face["probabilities"]  # the model's seven, in its label order (FER-2013's)
        assert len(probs) == 7 and abs(sum(probs) - 1.0) < 1e-4 and min(probs) >= 0.0
        assert EMOTIONS[probs.index(max(probs))] == face["emotion"] and abs(max(probs) - face["confidence"]) < 1e-5
        assert face["smoothed"]["emotion"] in EMOTIONS and 0.0 <= face["smoothed"]["confidence"] <= 1.0
        assert isinstance(face["track"], int) and face["track"] >= 1
        x, y, w, h = face["box"]
        assert x >= 0 and y >= 0 and x + w <= 176 and y + h <= 144
    fps = cv2.VideoCapture(str(file_run["paths"]["source"])).get(cv2.CAP_PROP_FPS)
    for event in file_run["events"]:  # a file's frames carry their time in the file
        assert set(event) == {"camera", "frame", "ts", "faces"}
        assert event["ts"] == pytest.approx(event["frame"] / fps, abs=1e-5)


def test_file_run_keeps_one_track_id_for_the_one_face_through_the_video(file_run: dict[str, Any]) -> None:
    """carphone shows one man: nearly every face line of a camera belongs to the same track."""
    for camera in ("a", "b"):
        ids = [f["track"] for e in file_run["events"] if e["camera"] == camera for f in e["faces"]]
        main, count = max(((t, ids.count(t)) for t in set(ids)), key=lambda tc: tc[1])
        assert count >= 0.8 * len(ids), f"camera {camera}: track ids {sorted(set(ids))}"
        changes = sum(1 for a, b in zip(ids, ids[1:], strict=False) if a != b)
        assert changes <= 0.1 * len(ids), f"camera {camera}: the id changed {changes} times"


def test_file_run_tracks_file_has_one_line_per_track_that_agrees_with_the_events(file_run: dict[str, Any]) -> None:
    for camera in ("a", "b"):
        faces = [(e["ts"], f) for e in file_run["events"] if e["camera"] == camera for f in e["faces"]]
        lines = {t["track"]: t for t in file_run["tracks"] if t["camera"] == camera}
        assert set(lines) == {f["track"] for _, f in faces}
        for track, line in lines.items():
            seen = [(ts, f) for ts, f in faces if f["track"] == track]
            assert line["frames"] == len(seen)
            assert line["first_seen"] == min(ts for ts, _ in seen) and line["last_seen"] == max(ts for ts, _ in seen)
            assert abs(line["seconds"] - (line["last_seen"] - line["first_seen"])) < 1e-3
            assert set(line["emotions"]) == set(EMOTIONS) and abs(sum(line["emotions"].values()) - 1.0) < 1e-3
            happy = sum(1 for _, f in seen if f["smoothed"]["emotion"] == "happy") / len(seen)
            assert abs(line["emotions"]["happy"] - happy) < 1e-3
            for k, label in enumerate(EMOTIONS):  # the mean of the frames' own probabilities
                mean = sum(f["probabilities"][k] for _, f in seen) / len(seen)
                assert abs(line["probabilities"][label] - mean) < 1e-5


def test_file_run_logs_each_cameras_progress_and_ends_with_a_summary_of_what_it_wrote(
    file_run: dict[str, Any], carphone_frames: list[np.ndarray]
) -> None:
    total = len(carphone_frames)
    for camera in ("a", "b"):  # not a terminal: a line per camera every progress_s
        done = [
            int(n)
            for n in re.findall(
                rf"camera {camera}: (\d+)/{total} frames \(\d+%\), [\d.]+ FPS, ETA [\d:?]+", file_run["log"]
            )
        ]
        assert done and done == sorted(done) and 0 < done[-1] <= total, file_run["log"][-3000:]
    events, tracks = file_run["events"], file_run["tracks"]
    faces = sum(len(e["faces"]) for e in events)
    paths = file_run["paths"]
    record = paths["record"]
    videos = f"{record.with_name('annotated.a.mp4')}, {record.with_name('annotated.b.mp4')}"
    summary = re.search(
        rf"emopipe: {len(events)} frames, {faces} faces, {len(tracks)} tracks from 2 camera\(s\) in [\d.]+ s "
        rf"\([\d.]+ FPS\), [\d.]+x real time; events: {re.escape(str(paths['events']))}; "
        rf"tracks: {re.escape(str(paths['tracks']))}; "
        rf"video: {re.escape(videos)}$",
        file_run["log"],
        re.MULTILINE,
    )
    assert summary, file_run["log"][-2000:]


def test_file_run_records_every_annotated_frame_per_camera_at_the_sources_rate(
    file_run: dict[str, Any], carphone_frames: list[np.ndarray], carphone: Path
) -> None:
    source = cv2.VideoCapture(str(carphone))
    source_fps = source.get(cv2.CAP_PROP_FPS)
    source.release()
    for camera, path in file_run["recordings"].items():
        cap = cv2.VideoCapture(str(path))
        count = 0
        while cap.read()[0]:
            count += 1
        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        fps = cap.get(cv2.CAP_PROP_FPS)
        cap.release()
        lines = [e for e in file_run["events"] if e["camera"] == camera]
        assert (count, len(lines), size) == (len(carphone_frames), len(carphone_frames), (176, 144)), camera
        assert fps == pytest.approx(source_fps, rel=0.01), camera  # it played 17% slow at a fixed 25


def results_link(
    ipc: Path, video: Path, model: Path, topics: list[bytes], **sections: dict[str, object]
) -> list[list[bytes]]:
    """A lossless run of the real capture, detect and classify processes on ``video`` (camera
    cam0), with the test in the sink's place subscribing to ``topics`` on the results link:
    every message it got, up to and with cam0's end-of-stream."""
    config = ipc / "c.toml"
    config.write_text(pipeline_toml(ipc, [("cam0", video, False)], classify={"model": model}, **sections))
    ctx = zmq.Context()
    sink = bus.Subscriber(ctx, f"ipc://{ipc}/results", topics, hwm=8)
    procs = [start_stage(stage, config, ipc / f"{stage}.log") for stage in ("capture", "detect", "classify")]
    got: list[list[bytes]] = []
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (got and got[-1][0].startswith(b"eos.")) and time.monotonic() < deadline:
            got.extend([part.bytes for part in parts] for parts in sink.receive(100))
    finally:
        codes = [stop(proc) for proc in procs]
        sink.close()
        ctx.term()
    assert got and got[-1][0] == b"eos.cam0.", (ipc / "capture.log").read_text()[-3000:]
    assert codes == [0, 0, 0]
    return got


@pytest.mark.parametrize("pixels", [False, True], ids=["results-only", "with-pixels"])
def test_capture_sends_the_sink_one_message_per_frame_in_order_with_pixels_only_if_it_asks(
    ipc_dir: Path, carphone: Path, model_path: Path, carphone_frames: list[np.ndarray], pixels: bool
) -> None:
    """A sink that draws nothing (no viewer, --record or --show) subscribes to results and
    end-of-stream only, and gets no pixels; one that subscribes to ``frame.cam0.`` too gets each
    frame after its results (here JPEG, as ``bus.frames_jpeg_quality`` sends them to detect)."""
    topics = [b"results.cam0.", b"eos.cam0.", *([b"frame.cam0."] if pixels else [])]
    got = results_link(ipc_dir, carphone, model_path, topics, bus={"frames_jpeg_quality": 90} if pixels else {})
    decoded = [messages.decode(parts) for parts in got]
    results = [msg for msg in decoded if isinstance(msg, Results)]
    total = len(carphone_frames)
    assert isinstance(decoded[-1], EndOfStream) and decoded[-1].seq == total
    assert [r.seq for r in results] == list(range(total)) and len(decoded) == total + 1  # one end-of-stream
    assert {len(parts) for parts in got[:-1]} == ({6} if pixels else {3})
    if pixels:
        assert all(r.frame is not None and r.frame.seq == r.seq for r in results)
        psnr = [cv2.PSNR(r.frame.image, carphone_frames[r.seq]) for r in results if r.frame is not None]
        assert len(psnr) == total and min(psnr) > 30
    else:
        assert all(r.frame is None for r in results)
        received = sum(len(part) for parts in got for part in parts)
        assert received < total * carphone_frames[0].nbytes / 20, received  # a 176x144 frame is 76 KB


def test_realtime_file_run_also_ends_by_itself_with_increasing_frames(
    ipc_dir: Path, carphone: Path, model_path: Path, carphone_frames: list[np.ndarray]
) -> None:
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [], classify={"model": model_path}))
    events, log = ipc_dir / "out.jsonl", ipc_dir / "run.log"
    proc = launch(config, log, "--source", str(carphone), "--events", str(events), "--realtime")
    try:
        assert proc.wait(RUN_TIMEOUT_S) == 0, log.read_text()[-3000:]
    finally:
        reap(proc, log)
    frames = [e["frame"] for e in read_events(events)]
    assert frames == sorted(set(frames)) and 0 < len(frames) <= len(carphone_frames)


def test_realtime_run_drops_stale_frames_while_detect_is_stalled_instead_of_queueing(
    ipc_dir: Path, carphone: Path, model_path: Path, carphone_frames: list[np.ndarray]
) -> None:
    """detect is frozen (SIGSTOP) for 1.5 s of a 30 fps live run: the ~45 frames captured
    meanwhile must be dropped (newest wins), not queued and worked off later."""
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [], classify={"model": model_path}))
    events, log = ipc_dir / "out.jsonl", ipc_dir / "run.log"
    proc = launch(config, log, "--source", str(carphone), "--events", str(events), "--realtime")
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (events.exists() and events.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        detect = stage_pids(log)["detect"]
        os.kill(detect, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(detect, signal.SIGCONT)
        assert proc.wait(RUN_TIMEOUT_S) == 0, log.read_text()[-3000:]
    finally:
        reap(proc, log)
    frames = [e["frame"] for e in read_events(events)]
    assert frames == sorted(set(frames))
    assert frames[0] < 60, f"the run started too late to test a stall: {frames}"
    largest_gap = max(b - a for a, b in zip(frames, frames[1:], strict=False))
    assert largest_gap >= 20, f"frames captured during the stall were queued, not dropped: {frames}"
    # newest wins: after the stall the pipeline is back at the live edge and keeps up to the end
    assert frames[-1] >= len(carphone_frames) - 10, frames


def test_viewer_serves_annotated_frames_during_a_looped_run_and_ctrl_c_stops_everything(
    ipc_dir: Path, carphone: Path, model_path: Path, carphone_frames: list[np.ndarray]
) -> None:
    port = free_port()
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [], classify={"model": model_path}, viewer={"port": port}))
    log = ipc_dir / "run.log"
    proc = launch(config, log, "--source", f"cam0={carphone}", "--loop")
    try:
        deadline = time.monotonic() + 60
        boxed = 0
        while boxed < 3 and time.monotonic() < deadline:  # some frames have no face: look at several
            jpeg = fetch(f"http://127.0.0.1:{port}/snapshot/cam0.jpg", deadline)
            snapshot = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert snapshot is not None and snapshot.shape == carphone_frames[0].shape
            boxed += green_pixels(snapshot) > 100
            time.sleep(0.2)
        assert boxed == 3, "no box drawn on the viewer's frames"
        assert max(green_pixels(f) for f in carphone_frames) < 20  # the raw video has no such green
        index = fetch(f"http://127.0.0.1:{port}/", deadline).decode()
        assert '<img src="/stream/cam0.mjpg"' in index
        assert f"viewer:  http://127.0.0.1:{port}/" in log.read_text()
        pids = stage_pids(log)
        assert set(pids) == {"capture", "detect", "classify", "sink"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        time.sleep(0.2)
        assert [name for name, pid in pids.items() if alive(pid)] == []
    finally:
        reap(proc, log)


def test_launcher_restarts_a_stage_that_dies(ipc_dir: Path, carphone: Path, model_path: Path) -> None:
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [], classify={"model": model_path}))
    log = ipc_dir / "run.log"
    proc = launch(config, log, "--source", str(carphone), "--loop")
    try:
        deadline = time.monotonic() + 30
        while "detect" not in stage_pids(log) and time.monotonic() < deadline:
            time.sleep(0.1)
        first = stage_pids(log)["detect"]
        os.kill(first, signal.SIGKILL)
        while stage_pids(log)["detect"] == first and time.monotonic() < deadline + 10:
            time.sleep(0.1)
        text = log.read_text()
        assert "detect exited with status -9; restart 1 in 1.0s" in text
        assert stage_pids(log)["detect"] != first and alive(stage_pids(log)["detect"])
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
        reap(proc, log)


def test_launcher_refuses_a_missing_source_naming_it(ipc_dir: Path) -> None:
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, []))
    log = ipc_dir / "run.log"
    proc = launch(config, log, "--source", str(ipc_dir / "missing.mp4"))
    assert proc.wait(30) == 2
    assert f"{ipc_dir}/missing.mp4 does not exist" in log.read_text()


def test_file_run_on_a_terminal_draws_a_progress_bar_per_camera(ipc_dir: Path, carphone: Path) -> None:
    """`emopipe run` in a real pseudo-terminal (120 columns): each camera's bar reaches its total."""
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, []))
    terminal, child = os.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    command = [sys.executable, "-m", "deploy.launcher", "run", "--config", str(config)]
    proc = subprocess.Popen(
        [*command, "--source", f"a={carphone}", "--source", f"b={carphone}"],
        cwd=REPO,
        stdin=child,
        stdout=child,
        stderr=child,
    )
    os.close(child)
    shown = b""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([terminal], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # the last writer closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        assert proc.wait(10) == 0, shown.decode(errors="replace")[-3000:]
    finally:
        os.close(terminal)
        if proc.poll() is None:
            proc.kill()
    text = shown.decode(errors="replace")
    total = int(re.search(r"source a: ended after (\d+) frames", text).group(1))  # type: ignore[union-attr]
    for camera in ("a", "b"):
        assert re.search(rf"{camera}: 100%\|[^|]*\| {total}/{total} \[[\d:]+<00:00, +[\d.]+frame/s\]", text), text[
            -3000:
        ]
    assert f"emopipe: {2 * total} frames" in text


def test_each_stage_sigkilled_in_turn_results_flow_again_within_5_s_and_the_lines_stay_whole(
    ipc_dir: Path, carphone: Path, model_path: Path
) -> None:
    port = free_port()
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [], classify={"model": model_path}, viewer={"port": port}))
    log, events = ipc_dir / "run.log", ipc_dir / "events.jsonl"
    proc = launch(config, log, "--source", f"cam0={carphone}", "--loop", "--realtime", "--events", str(events))

    def lines() -> int:
        return written_so_far(events).count(b"\n")

    def flowing(since: float, within: float) -> bool:
        """Three lines of frames captured after ``since`` (epoch s) written within ``within`` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            raw = written_so_far(events)
            tail = raw[: raw.rfind(b"\n") + 1].splitlines()[-20:]  # whole lines (one may be half written)
            if sum(json.loads(line)["ts"] > since for line in tail) >= 3:
                return True
            time.sleep(0.05)
        return False

    try:
        assert flowing(0, 60), log.read_text()
        recovery = {}
        for stage in ("capture", "detect", "classify", "sink"):
            pid = stage_pids(log)[stage]
            before = lines()
            killed, clock = time.time(), time.monotonic()
            os.kill(pid, signal.SIGKILL)
            assert flowing(killed, 5.0), f"no results within 5 s of killing {stage}:\n{log.read_text()[-3000:]}"
            recovery[stage] = round(time.monotonic() - clock, 2)
            assert stage_pids(log)[stage] != pid and lines() > before
            if stage == "sink":  # the viewer is back too
                jpeg = fetch(f"http://127.0.0.1:{port}/snapshot/cam0.jpg", time.monotonic() + 5)
                assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) is not None
        print("results again after SIGKILL (s):", recovery)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
        reap(proc, log)
    raw = events.read_bytes()
    assert raw.endswith(b"\n")
    written = [json.loads(line) for line in raw.splitlines()]  # every line whole: each parses
    keys = [(e["camera"], e["frame"], e["ts"]) for e in written]
    assert len(keys) == len(set(keys)), "a line was written twice"
