"""The wire format: round trips, zero-copy payloads, and every malformed message named."""

from __future__ import annotations

import cv2
import msgpack
import numpy as np
import pytest

from emopipe import messages
from emopipe.messages import Box, EndOfStream, FaceResult, Faces, Frame, MessageError, Results

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def roundtrip(msg: messages.Message) -> messages.Message:
    parts = messages.encode(msg, sent=123.5)
    return messages.decode([bytes(p) for p in parts])


def test_frame_round_trips_with_pixels_shape_and_timestamps() -> None:
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    out = roundtrip(Frame(camera="cam0", seq=7, ts=1.25, image=image))
    assert isinstance(out, Frame)
    assert (out.camera, out.seq, out.ts, out.sent) == ("cam0", 7, 1.25, 123.5)
    np.testing.assert_array_equal(out.image, image)


def test_frame_payload_is_the_image_buffer_not_a_copy() -> None:
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    payload = messages.encode(Frame("cam0", 0, 0.0, image), sent=0.0)[2]
    image[0, 0, 0] = 9
    assert bytes(payload)[0] == 9


def test_topic_carries_kind_and_camera_and_is_not_a_prefix_of_a_longer_id() -> None:
    assert messages.encode(EndOfStream("cam1", 3, 0.0), 0.0)[0] == b"eos.cam1."
    assert not messages.topic("frame", "cam10").startswith(messages.topic("frame", "cam1"))
    assert messages.topic("frame", "cam10").startswith(messages.topic("frame"))


def test_faces_round_trip_boxes_and_crops_including_no_face() -> None:
    crops = np.full((2, 48, 48), 7, dtype=np.uint8)
    out = roundtrip(Faces("c", 1, 2.0, (Box(1, 2, 3, 4), Box(5, 6, 7, 8)), crops))
    assert isinstance(out, Faces) and out.boxes == (Box(1, 2, 3, 4), Box(5, 6, 7, 8))
    assert out.crops.shape == (2, 48, 48) and int(out.crops.sum()) == 7 * 2 * 48 * 48
    empty = roundtrip(Faces("c", 2, 2.0, (), np.zeros((0, 48, 48), dtype=np.uint8)))
    assert isinstance(empty, Faces) and empty.boxes == () and empty.crops.shape == (0, 48, 48)


def test_results_round_trip_label_confidence_and_probabilities() -> None:
    probs = (0.1, 0.0, 0.0, 0.7, 0.1, 0.0, 0.1)
    face = FaceResult(Box(1, 2, 3, 4), "happy", 0.7, probs)
    out = roundtrip(Results("c", 4, 9.0, (face,), LABELS))
    assert isinstance(out, Results)
    assert out.labels == LABELS
    (got,) = out.faces
    assert (got.box, got.emotion) == (Box(1, 2, 3, 4), "happy")
    assert got.confidence == pytest.approx(0.7)
    assert got.probabilities == pytest.approx(probs)


def test_end_of_stream_round_trips_the_frame_count() -> None:
    out = roundtrip(EndOfStream("cam0", 120, 5.0))
    assert out == EndOfStream("cam0", 120, 5.0, sent=123.5)


def frame_parts(**header_changes: object) -> list[bytes]:
    parts = [bytes(p) for p in messages.encode(Frame("cam0", 0, 0.0, np.zeros((4, 4, 3), np.uint8)), 0.0)]
    header = msgpack.unpackb(parts[1])
    header.update(header_changes)
    parts[1] = msgpack.packb(header)
    return parts


@pytest.mark.parametrize(
    ("parts", "reason", "named"),
    [
        (frame_parts()[:2], "malformed", "3 parts"),
        (frame_parts(shape=[4, 5, 3]), "malformed", "60 bytes"),
        (frame_parts(v=1), "version", "schema version 1"),
        (frame_parts(dtype="float64"), "malformed", "float64"),
        (frame_parts(camera="other"), "malformed", "does not match"),
        (frame_parts(seq="x"), "malformed", "'seq'"),
        ([b"frame.cam0.", b"\xc1garbage", b""], "malformed", "not msgpack"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason_naming_the_problem(
    parts: list[bytes], reason: str, named: str
) -> None:
    with pytest.raises(MessageError, match=named) as info:
        messages.decode(parts)
    assert info.value.reason == reason


def test_oversized_payload_is_rejected_before_decoding() -> None:
    parts = frame_parts()
    parts[2] = b"\0" * (messages.MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(MessageError) as info:
        messages.decode(parts)
    assert info.value.reason == "oversized"


def test_results_with_an_emotion_outside_the_labels_are_rejected() -> None:
    face = FaceResult(Box(0, 0, 1, 1), "happy", 1.0, (1.0,))
    parts = [bytes(p) for p in messages.encode(Results("c", 0, 0.0, (face,), ("happy",)), 0.0)]
    header = msgpack.unpackb(parts[1])
    header["emotions"] = ["bored"]
    parts[1] = msgpack.packb(header)
    with pytest.raises(MessageError, match="bored"):
        messages.decode(parts)


def test_a_jpeg_frame_round_trips_close_to_the_pixels_in_a_fraction_of_the_bytes(
    carphone_frames: list[np.ndarray],
) -> None:
    image = cv2.resize(carphone_frames[10], (640, 480))
    parts = messages.encode(Frame("cam0", 3, 1.0, image), sent=2.0, jpeg_quality=90)
    assert len(parts[2]) < image.nbytes / 8  # 921,600 raw bytes
    assert messages.jpeg_size(np.frombuffer(parts[2], np.uint8)) == (640, 480)
    back = messages.decode([bytes(p) for p in parts])
    assert isinstance(back, Frame) and back.image.shape == image.shape and back.seq == 3
    assert cv2.PSNR(back.image, image) > 30


def test_a_jpeg_frame_that_lies_about_its_size_or_does_not_decode_is_refused_before_its_pixels() -> None:
    small = messages.encode(Frame("cam0", 0, 1.0, np.zeros((48, 64, 3), np.uint8)), sent=1.0, jpeg_quality=80)
    header = msgpack.unpackb(small[1])
    huge_header = {**header, "image": [60000, 60000, 3]}  # 10.8 GB of pixels
    with pytest.raises(MessageError, match="bad frame shape"):
        messages.decode([small[0], msgpack.packb(huge_header), bytes(small[2])])
    other = {**header, "image": [96, 128, 3]}  # the JPEG itself is 64x48
    with pytest.raises(MessageError, match="not a 128x96 image"):
        messages.decode([small[0], msgpack.packb(other), bytes(small[2])])
    cut = bytes(small[2])[:200]  # a start-of-frame, then nothing to decode
    cut_header = {**header, "shape": [len(cut)]}
    with pytest.raises(MessageError, match="JPEG"):
        messages.decode([small[0], msgpack.packb(cut_header), cut])
    with pytest.raises(MessageError, match="unknown frame codec"):
        messages.decode([small[0], msgpack.packb({**header, "codec": "png"}), bytes(small[2])])


def results_with_frame(seq: int, image: np.ndarray, frame_seq: int | None = None, camera: str = "cam0") -> Results:
    probs = (0.1, 0.0, 0.0, 0.7, 0.1, 0.0, 0.1)
    face = FaceResult(Box(1, 2, 3, 4), "happy", 0.7, probs, track=5)
    pixels = Frame(camera, seq if frame_seq is None else frame_seq, 9.0, image)
    return Results("cam0", seq, 9.0, (face,), LABELS, frame=pixels)


def test_results_with_their_raw_frame_are_six_parts_that_round_trip_the_pixels_unchanged() -> None:
    image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    parts = messages.encode(results_with_frame(4, image), sent=123.5)
    assert [bytes(parts[0]), bytes(parts[3])] == [b"results.cam0.", b"frame.cam0."] and len(parts) == 6
    out = messages.decode([bytes(p) for p in parts])
    assert isinstance(out, Results) and isinstance(out.frame, Frame)
    assert (out.seq, out.faces[0].track, out.frame.camera, out.frame.seq) == (4, 5, "cam0", 4)
    np.testing.assert_array_equal(out.frame.image, image)
    alone = messages.decode([bytes(p) for p in parts[:3]])  # the results' own three parts
    assert isinstance(alone, Results) and alone.frame is None and alone == out


def test_results_with_their_jpeg_frame_round_trip_close_to_the_pixels(carphone_frames: list[np.ndarray]) -> None:
    image = carphone_frames[10]
    parts = messages.encode(results_with_frame(7, image), sent=1.0, jpeg_quality=90)
    assert msgpack.unpackb(parts[4])["codec"] == "jpeg" and len(parts[5]) < image.nbytes / 4
    out = messages.decode([bytes(p) for p in parts])
    assert isinstance(out, Results) and out.frame is not None and out.frame.seq == 7
    assert out.frame.image.shape == image.shape and cv2.PSNR(out.frame.image, image) > 30


def test_with_frame_sends_the_frame_parts_capture_encoded_without_copying_them() -> None:
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    frame_parts = messages.encode(Frame("cam0", 0, 0.0, image), sent=0.0)
    plain = Results("cam0", 0, 0.0, (), LABELS)
    parts = messages.with_frame(messages.encode(plain, sent=0.0), frame_parts)
    assert parts[3:] == frame_parts and parts[5] is frame_parts[2]


@pytest.mark.parametrize(
    ("msg", "named"),
    [
        (results_with_frame(4, np.zeros((4, 4, 3), np.uint8), frame_seq=5), "frame 4 carry frame 5 of camera cam0"),
        (results_with_frame(4, np.zeros((4, 4, 3), np.uint8), camera="cam1"), "frame 4 carry frame 4 of camera cam1"),
    ],
)
def test_results_carrying_another_frame_are_refused_naming_both(msg: Results, named: str) -> None:
    with pytest.raises(MessageError, match=named) as info:
        messages.decode([bytes(p) for p in messages.encode(msg, sent=0.0)])
    assert info.value.reason == "malformed"


def test_six_parts_that_are_not_results_and_their_frame_are_refused_naming_what_they_are() -> None:
    eos = [bytes(p) for p in messages.encode(EndOfStream("cam0", 3, 0.0), 0.0)]
    frame = [bytes(p) for p in messages.encode(Frame("cam0", 0, 0.0, np.zeros((4, 4, 3), np.uint8)), 0.0)]
    res = [bytes(p) for p in messages.encode(Results("cam0", 0, 0.0, (), LABELS), 0.0)]
    with pytest.raises(MessageError, match="must be results and a frame, not eos"):
        messages.decode(eos + frame)
    with pytest.raises(MessageError, match="results followed by results, not by their frame"):
        messages.decode(res + res)
