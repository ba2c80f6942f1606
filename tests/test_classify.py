"""classify: the shipped model's contract, read from its own metadata; batching; the stage process."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import zmq

from emopipe import messages
from emopipe.config import DetectConfig
from emopipe.labels import EMOTIONS
from emopipe.messages import Box, Faces, Results
from helpers import (
    WorkerHub,
    free_port,
    garbage_like,
    pipeline_toml,
    scrape_value,
    start_stage,
    stop,
    wait_for,
    write_model,
)
from services.classify.main import classify
from services.classify.model import EmotionModel, ModelError
from services.detect.detector import FaceDetector


@pytest.fixture(scope="module")
def model(model_path: Path) -> EmotionModel:
    return EmotionModel(model_path)


@pytest.fixture(scope="module")
def real_faces(carphone_frames: list[np.ndarray]) -> Faces:
    """Faces detect finds in a few frames of the real video, as one batch."""
    detector = FaceDetector(DetectConfig(), 48)
    found = [detector.detect(f) for f in carphone_frames[:40:8]]
    boxes = tuple(b for bs, _ in found for b in bs)
    crops = np.concatenate([c for _, c in found])
    assert len(boxes) >= 3
    return Faces("cam0", 0, 1.0, boxes, crops)


def test_model_describes_itself_with_the_fer2013_labels_and_input_size(model: EmotionModel) -> None:
    assert model.labels == EMOTIONS  # read from the ONNX metadata, compared with training's order
    assert model.input_size == 48
    assert len(model.sha256) == 64


def test_probabilities_for_real_faces_are_valid_distributions(model: EmotionModel, real_faces: Faces) -> None:
    probs = model.predict(real_faces.crops)
    assert probs.shape == (len(real_faces.boxes), len(model.labels))
    assert np.all(probs >= 0) and np.all(probs <= 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)


def test_one_batch_gives_the_same_answer_as_face_by_face(model: EmotionModel, real_faces: Faces) -> None:
    batch = model.predict(real_faces.crops)
    single = np.concatenate([model.predict(real_faces.crops[i : i + 1]) for i in range(len(real_faces.boxes))])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_each_face_gets_the_most_probable_label_and_its_confidence(model: EmotionModel, real_faces: Faces) -> None:
    res = classify(model, real_faces)
    assert [f.box for f in res.faces] == list(real_faces.boxes)
    for face in res.faces:
        k = int(np.argmax(face.probabilities))
        assert face.emotion == model.labels[k] and face.confidence == pytest.approx(face.probabilities[k])
        assert 0.0 <= face.confidence <= 1.0


def test_a_frame_without_faces_gives_empty_results(model: EmotionModel) -> None:
    res = classify(model, Faces("cam0", 3, 1.0, (), np.zeros((0, 48, 48), np.uint8)))
    assert res.faces == () and res.seq == 3 and res.labels == model.labels


def test_missing_model_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=f"{tmp_path}/none.onnx does not exist"):
        EmotionModel(tmp_path / "none.onnx")


def test_model_without_labels_metadata_is_an_error_naming_the_file(model_path: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(model_path))
    del proto.metadata_props[:]
    stripped = tmp_path / "stripped.onnx"
    onnx.save(proto, str(stripped))
    with pytest.raises(ModelError, match=f"{stripped} has no 'labels' metadata"):
        EmotionModel(stripped)


def test_model_with_wrong_label_count_breaks_the_contract(model_path: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(model_path))
    for prop in proto.metadata_props:
        if prop.key == "labels":
            prop.value = json.dumps(["happy", "sad"])
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(ModelError, match=str(bad)):
        EmotionModel(bad)


def test_metadata_input_size_that_the_graph_does_not_take_is_refused_naming_both(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"metadata input_size is 64 but its graph takes 48x48 inputs"):
        EmotionModel(write_model(tmp_path / "m.onnx", 48, metadata_size=64))


def test_a_model_that_declares_histogram_equalisation_is_served_equalised_faces(tmp_path: Path) -> None:
    plain = EmotionModel(write_model(tmp_path / "plain.onnx", 48, seed=5))
    equalising = EmotionModel(write_model(tmp_path / "eq.onnx", 48, seed=5, preprocessing="equalize_hist"))
    assert plain.preprocessing == "none" and equalising.preprocessing == "equalize_hist"
    assert equalising.info()["preprocessing"] == "equalize_hist"
    rng = np.random.default_rng(1)
    crops = rng.integers(100, 130, (3, 48, 48)).astype(np.uint8)  # a dim, flat face
    equalised = np.stack([cv2.equalizeHist(c) for c in crops])
    np.testing.assert_allclose(equalising.predict(crops), plain.predict(equalised), atol=1e-6)
    assert not np.allclose(equalising.predict(crops), plain.predict(crops), atol=1e-4)


def test_a_model_that_declares_an_unknown_preprocessing_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"m.onnx: metadata 'preprocessing' is 'clahe'"):
        EmotionModel(write_model(tmp_path / "m.onnx", 48, preprocessing="clahe"))


def test_a_model_of_another_input_size_is_served_at_its_own_size(tmp_path: Path) -> None:
    model = EmotionModel(write_model(tmp_path / "m64.onnx", 64))
    assert model.input_size == 64
    res = classify(model, Faces("cam0", 0, 1.0, (Box(0, 0, 64, 64),), np.full((1, 64, 64), 90, np.uint8)))
    assert [f.confidence for f in res.faces] == [pytest.approx(1 / len(EMOTIONS))]


def test_crops_of_another_size_are_resized_to_the_model_with_a_warning_naming_both(
    model: EmotionModel, real_faces: Faces, caplog: pytest.LogCaptureFixture
) -> None:
    big = np.stack([cv2.resize(c, (64, 64), interpolation=cv2.INTER_CUBIC) for c in real_faces.crops])
    res = classify(model, dataclasses.replace(real_faces, crops=big))
    assert len(res.faces) == len(real_faces.boxes)
    want = classify(model, real_faces)
    agree = sum(a.emotion == b.emotion for a, b in zip(res.faces, want.faces, strict=True))
    assert agree >= len(res.faces) - 1  # up- then down-sampled faces mostly keep their label
    assert "detect sends 64x64 crops but model" in caplog.text and "takes 48x48" in caplog.text


@pytest.fixture
def classify_stage(ipc_dir: Path, carphone: Path, model_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A classify process on ipc:// in ``ipc_dir``, serving metrics; yields it and its metrics port."""
    port = free_port()
    config = ipc_dir / "c.toml"
    config.write_text(
        pipeline_toml(ipc_dir, [("cam0", carphone, False)], classify={"metrics_port": port, "model": model_path})
    )
    proc = start_stage("classify", config, ipc_dir / "classify.log")
    yield proc, port
    assert stop(proc) == 0


def test_classify_worker_answers_every_faces_message_and_exports_model_info(
    ipc_dir: Path,
    zmq_ctx: zmq.Context,
    real_faces: Faces,
    model_path: Path,
    classify_stage: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = classify_stage
    hub = WorkerHub(zmq_ctx, ipc_dir, "faces", "classify")
    hub.submit(real_faces)
    hub.submit(Faces("cam0", 1, 2.0, (), np.zeros((0, 48, 48), np.uint8)))
    got = hub.answers(2, timeout=60)
    assert len(got) == 2, f"no results; log:\n{(ipc_dir / 'classify.log').read_text()}"
    assert isinstance(got[0], Results) and len(got[0].faces) == len(real_faces.boxes)
    assert all(f.emotion in EMOTIONS for f in got[0].faces)
    assert isinstance(got[1], Results) and got[1].faces == ()
    deadline = time.monotonic() + 10
    text = ""
    while "emopipe_model_info" not in text and time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    info = next(line for line in text.splitlines() if line.startswith("emopipe_model_info{"))
    assert f'labels="{",".join(EMOTIONS)}"' in info and f'path="{model_path}"' in info
    predicted = sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("emopipe_predictions_total{")
    )
    assert predicted == 0  # the sink counts predictions, by each track's smoothed label
    hub.close()


def test_classify_process_answers_every_real_message_among_garbage_and_counts_each(
    ipc_dir: Path, zmq_ctx: zmq.Context, real_faces: Faces, classify_stage: tuple[subprocess.Popen[bytes], int]
) -> None:
    proc, port = classify_stage
    rng = np.random.default_rng(0)
    count, repeat = 10, 200
    hub = WorkerHub(zmq_ctx, ipc_dir, "faces", "classify")
    for seq in range(count):
        faces = dataclasses.replace(real_faces, seq=seq)
        hub.submit(faces)
        for parts in garbage_like(messages.encode(faces, sent=time.time()), rng) * repeat:
            hub.send_raw(parts)
    got = hub.answers(count, timeout=60)
    assert [m.seq for m in got] == list(range(count))
    assert all(isinstance(m, Results) and len(m.faces) == len(real_faces.boxes) for m in got)
    malformed = 'emopipe_frames_dropped_total{reason="malformed",stage="classify"}'
    assert wait_for(lambda: scrape_value(port, malformed) == count * 4 * repeat, 10), scrape_value(port, malformed)
    assert proc.poll() is None
    assert 1 <= (ipc_dir / "classify.log").read_text().count("classify: dropped message") <= 8
    hub.close()


@pytest.mark.parametrize("stage", ["classify", "detect"])  # detect reads the model's input size
def test_a_stage_exits_with_a_config_error_naming_a_missing_model(stage: str, ipc_dir: Path, carphone: Path) -> None:
    config = ipc_dir / "c.toml"
    config.write_text(pipeline_toml(ipc_dir, [("cam0", carphone, False)], classify={"model": ipc_dir / "no.onnx"}))
    proc = start_stage(stage, config, ipc_dir / f"{stage}.log")
    assert proc.wait(60) == 2
    assert f"model file {ipc_dir}/no.onnx does not exist" in (ipc_dir / f"{stage}.log").read_text()
