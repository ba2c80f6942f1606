"""detect: the Haar cascade with the reference parameters, edge boxes, crops; the stage process."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from emopipe import messages
from emopipe.config import DetectConfig
from emopipe.messages import Box, EndOfStream, Faces, Frame
from helpers import WorkerHub, free_port, garbage_like, pipeline_toml, start_stage, stop, write_model
from services.detect.detector import FaceDetector, clip_box


def reference_haar(image: np.ndarray) -> list[list[int]]:
    """The acceptance reference: OpenCV's cascade alone, scale 1.1, 5 neighbours, 40x40, full frame."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
    return sorted([int(v) for v in box] for box in found)


def test_default_detector_finds_exactly_the_reference_faces_on_the_real_video(
    carphone_frames: list[np.ndarray],
) -> None:
    detector = FaceDetector(DetectConfig(), 48)
    frames = carphone_frames[::6]
    ours = [sorted(b.as_list() for b in detector.detect(f)[0]) for f in frames]
    assert ours == [reference_haar(f) for f in frames]
    assert sum(1 for boxes in ours if boxes) >= len(frames) // 3  # the video does show a face


def test_crops_are_the_boxes_in_grey_resized_to_48x48(carphone_frames: list[np.ndarray]) -> None:
    image = carphone_frames[0]
    boxes, crops = FaceDetector(DetectConfig(), 48).detect(image)
    assert len(boxes) >= 1 and crops.shape == (len(boxes), 48, 48) and crops.dtype == np.uint8
    b = boxes[0]
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    expected = cv2.resize(gray[b.y : b.y + b.h, b.x : b.x + b.w], (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(crops[0], expected)


def test_frame_without_a_face_gives_no_boxes_and_an_empty_crop_array() -> None:
    boxes, crops = FaceDetector(DetectConfig(), 48).detect(np.zeros((120, 160, 3), dtype=np.uint8))
    assert boxes == () and crops.shape == (0, 48, 48)


def test_boxes_over_the_frame_edge_are_clipped_not_lost() -> None:
    assert clip_box(-10, -5, 50, 40, 100, 100) == Box(0, 0, 40, 35)
    assert clip_box(80, 90, 50, 50, 100, 100) == Box(80, 90, 20, 10)
    assert clip_box(120, 0, 10, 10, 100, 100) is None


def test_downscaled_detection_reports_boxes_in_full_frame_pixels(carphone_frames: list[np.ndarray]) -> None:
    big = cv2.resize(carphone_frames[0], None, fx=2, fy=2)
    full = FaceDetector(DetectConfig(), 48).detect(big)[0]
    half = FaceDetector(DetectConfig(downscale=2.0), 48).detect(big)[0]
    assert len(full) == 1 and len(half) == 1
    assert abs(full[0].x - half[0].x) <= 8 and abs(full[0].w - half[0].w) <= 16


# ------------------------------------------------------------ the stage as a process


@pytest.fixture
def detect_stage(ipc_dir: Path, carphone: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [("cam0", carphone, False)], detect={"metrics_port": port}))
    proc = start_stage("detect", config, ipc_dir / "detect.log")
    yield proc, ipc_dir, port
    stop(proc)


def scrape(port: int) -> str:
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def metric_value(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {line_start} in /metrics")


def test_detect_worker_answers_every_frame_and_survives_malformed_messages(
    detect_stage,
    zmq_ctx: zmq.Context,
    carphone_frames: list[np.ndarray],  # type: ignore[no-untyped-def]
) -> None:
    proc, ipc, port = detect_stage
    hub = WorkerHub(zmq_ctx, ipc, "frames", "detect")
    hub.submit(Frame("cam0", 0, 1.0, carphone_frames[0]))
    good = messages.encode(Frame("cam0", 1, 2.0, np.zeros((60, 80, 3), np.uint8)), sent=time.time())
    hub.send_raw([good[0], good[1], b"short"])  # wrong byte count
    bad_version = [bytes(p) for p in good]
    bad_version[1] = bad_version[1].replace(b"\xa1v\x02", b"\xa1v\x63")  # schema version 99
    hub.send_raw(bad_version)
    hub.submit(Frame("cam0", 1, 2.0, np.zeros((60, 80, 3), np.uint8)))
    hub.send_raw(messages.encode(EndOfStream("cam0", 2, 3.0), sent=time.time()))  # not work: dropped, counted
    first, second = hub.answers(2)
    assert isinstance(first, Faces) and first.seq == 0 and len(first.boxes) == 1
    assert isinstance(second, Faces) and second.seq == 1 and second.boxes == ()
    assert hub.answers(1, timeout=1) == []
    text = scrape(port)
    assert metric_value(text, 'emopipe_frames_dropped_total{reason="malformed",stage="detect"}') == 2
    assert metric_value(text, 'emopipe_frames_dropped_total{reason="version",stage="detect"}') == 1
    assert metric_value(text, 'emopipe_frames_processed_total{camera="cam0",stage="detect"}') == 2
    assert metric_value(text, 'emopipe_faces_detected_total{camera="cam0"}') == 1
    assert proc.poll() is None, "detect died on a malformed message"
    log = (ipc / "detect.log").read_text()
    assert "needs 14400 bytes, payload has 5" in log and "schema version 99" in log
    hub.close()


def test_detect_process_crops_at_the_input_size_of_the_configured_model(
    ipc_dir: Path, carphone: Path, zmq_ctx: zmq.Context, carphone_frames: list[np.ndarray]
) -> None:
    config = ipc_dir / "c.toml"
    model = write_model(ipc_dir / "m64.onnx", 64)
    config.write_text(pipeline_toml(ipc_dir, [("cam0", carphone, False)], classify={"model": model}))
    proc = start_stage("detect", config, ipc_dir / "detect.log")
    try:
        hub = WorkerHub(zmq_ctx, ipc_dir, "frames", "detect")
        hub.submit(Frame("cam0", 0, 1.0, carphone_frames[0]))
        answers = hub.answers(1)
        assert answers, f"detect answered nothing; log:\n{(ipc_dir / 'detect.log').read_text()}"
        faces = answers[0]
        assert isinstance(faces, Faces) and faces.crops.shape == (1, 64, 64)
        assert f"crops of 64x64 pixels, the input of {model}" in (ipc_dir / "detect.log").read_text()
        hub.close()
    finally:
        assert stop(proc) == 0


def test_a_flood_of_garbage_is_counted_by_reason_and_logged_a_few_times_while_frames_flow(
    detect_stage,
    zmq_ctx: zmq.Context,
    carphone_frames: list[np.ndarray],  # type: ignore[no-untyped-def]
) -> None:
    proc, ipc, port = detect_stage
    hub = WorkerHub(zmq_ctx, ipc, "frames", "detect")
    good = messages.encode(Frame("cam0", 0, 1.0, np.zeros((60, 80, 3), np.uint8)), sent=time.time())
    garbage = garbage_like(good, np.random.default_rng(0))
    for seq in range(10):
        hub.submit(Frame("cam0", seq, 1.0 + seq, carphone_frames[seq]))
        for parts in garbage * 500:
            hub.send_raw(parts)
    got = hub.answers(10)
    assert [m.seq for m in got] == list(range(10)) and all(isinstance(m, Faces) for m in got)
    text = scrape(port)
    assert metric_value(text, 'emopipe_frames_dropped_total{reason="malformed",stage="detect"}') == 10 * 4 * 500
    assert metric_value(text, 'emopipe_frames_processed_total{camera="cam0",stage="detect"}') == 10
    assert proc.poll() is None
    log = (ipc / "detect.log").read_text()
    assert 1 <= log.count("detect: dropped message") <= 6  # throttled: per reason, the first, then one per 10 s
    hub.close()
