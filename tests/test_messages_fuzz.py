"""Property-based tests of the decoder: whatever bytes arrive, ``decode`` returns a well-formed
message or raises MessageError with a drop reason, never anything else."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emopipe import messages
from emopipe.messages import Box, EndOfStream, FaceResult, Faces, Frame, MessageError, Results

REASONS = {"malformed", "oversized", "version"}
LABELS = ("angry", "happy", "neutral")
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# msgpack values of any shape: what a hostile header field may hold
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80)
    | st.binary(max_size=80),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
    max_leaves=20,
)


def sample_messages() -> list[messages.Message]:
    crops = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    probs = ((0.1, 0.7, 0.2), (0.5, 0.25, 0.25))
    return [
        Frame(camera="cam0", seq=3, ts=1.5, image=np.zeros((4, 6, 3), np.uint8)),
        Faces(camera="door", seq=0, ts=2.0, boxes=(Box(0, 1, 4, 4), Box(2, 2, 3, 3)), crops=crops, tracks=(1, 2)),
        Results(
            camera="a-b_c",
            seq=7,
            ts=3.0,
            faces=tuple(
                FaceResult(box=Box(i, i, 4, 4), emotion=LABELS[int(np.argmax(p))], confidence=max(p), probabilities=p)
                for i, p in enumerate(probs)
            ),
            labels=LABELS,
        ),
        EndOfStream(camera="cam0", seq=10, ts=4.0),
    ]


def wire(msg: messages.Message) -> list[bytes]:
    return [bytes(p) for p in messages.encode(msg, sent=5.0)]


def decoded_or_reason(parts: list[bytes]) -> messages.Message | str:
    """What a stage does with the parts: a message, or the drop reason; any other exception fails."""
    try:
        msg = messages.decode(parts)
    except MessageError as exc:
        assert exc.reason in REASONS, exc
        return exc.reason
    assert messages.CAMERA_ID.fullmatch(msg.camera)
    assert msg.seq >= 0 and 0 <= msg.ts < math.inf and 0 <= msg.sent < math.inf
    if isinstance(msg, Results):
        assert all(0 <= f.confidence <= 1 and all(math.isfinite(p) for p in f.probabilities) for f in msg.faces)
    assert isinstance(msg, (Frame, Faces)) or messages.decode(messages.encode(msg, sent=msg.sent)) == msg
    return msg


@FAST
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_random_parts_are_dropped_with_a_reason(parts: list[bytes]) -> None:
    assert isinstance(decoded_or_reason(parts), str)


@FAST
@given(st.sampled_from(range(4)), st.data())
def test_a_truncated_header_is_dropped_as_malformed(which: int, data: st.DataObject) -> None:
    topic, header, payload = wire(sample_messages()[which])
    cut = data.draw(st.integers(min_value=0, max_value=len(header) - 1))
    assert decoded_or_reason([topic, header[:cut], payload]) in REASONS


HEADER_KEYS = ["v", "kind", "camera", "seq", "ts", "sent", "shape", "dtype", "boxes", "tracks", "labels"]


@FAST
@given(st.sampled_from(range(4)), st.sampled_from(HEADER_KEYS) | st.text(min_size=1, max_size=8), values)
def test_any_header_field_holding_anything_gives_a_message_or_a_reason(which: int, key: str, value: Any) -> None:
    topic, header, payload = wire(sample_messages()[which])
    fields = msgpack.unpackb(header)
    fields[key] = value
    decoded_or_reason([topic, msgpack.packb(fields), payload])


@FAST
@given(st.integers(min_value=-(2**63), max_value=2**64 - 1).filter(lambda v: v != messages.SCHEMA_VERSION))
def test_another_schema_version_is_dropped_as_version(version: int) -> None:
    topic, header, payload = wire(sample_messages()[0])
    fields = msgpack.unpackb(header)
    fields["v"] = version
    assert decoded_or_reason([topic, msgpack.packb(fields), payload]) == "version"


@FAST
@given(st.lists(st.integers(min_value=0, max_value=2**40), max_size=5))
def test_a_shape_that_lies_about_the_byte_count_is_dropped(shape: list[int]) -> None:
    topic, header, payload = wire(sample_messages()[0])  # 4 x 6 x 3 bytes
    fields = msgpack.unpackb(header)
    fields["shape"] = shape
    outcome = decoded_or_reason([topic, msgpack.packb(fields), payload])
    if math.prod(shape) != len(payload) or len(shape) != 3 or shape[2] != 3:
        assert outcome == "malformed"


@FAST
@given(st.sampled_from(["ts", "sent"]), st.sampled_from([math.nan, -math.inf, math.inf, -1.0, -1e-9, -(2**40)]))
def test_nan_infinite_and_negative_times_are_dropped(key: str, value: float) -> None:
    topic, header, payload = wire(sample_messages()[3])
    fields = msgpack.unpackb(header)
    fields[key] = value
    assert decoded_or_reason([topic, msgpack.packb(fields), payload]) == "malformed"


@FAST
@given(
    st.text(min_size=65, max_size=300, alphabet="ab")
    | st.text(min_size=1, max_size=10).map(lambda s: "cam" + s + "\n")
    | st.text(alphabet=st.characters(max_codepoint=31), min_size=1, max_size=5)
)
def test_camera_ids_too_long_or_with_control_characters_are_dropped(camera: str) -> None:
    _, header, payload = wire(sample_messages()[3])
    fields = msgpack.unpackb(header)
    fields["camera"] = camera
    topic = f"eos.{camera}.".encode()
    assert decoded_or_reason([topic, msgpack.packb(fields), payload]) == "malformed"


@FAST
@given(st.integers(min_value=4, max_value=2000))
def test_a_message_of_many_parts_is_dropped(count: int) -> None:
    parts = wire(sample_messages()[3]) + [b"x"] * (count - 3)
    assert decoded_or_reason(parts) == "malformed"


def test_an_oversized_header_is_dropped_before_it_is_unpacked() -> None:
    topic, _, payload = wire(sample_messages()[3])
    assert decoded_or_reason([topic, b"\x00" * (messages.MAX_HEADER_BYTES + 1), payload]) == "oversized"


@FAST
@given(
    st.sampled_from([[math.nan] * 3, [math.inf, 0, 0], [0.2, 0.3, -math.inf]]),
    st.sampled_from([1.5, -0.1, math.nan]),
)
def test_results_with_non_finite_probabilities_or_confidences_out_of_range_are_dropped(
    row: list[float], confidence: float
) -> None:
    good = sample_messages()[2]
    assert isinstance(good, Results)
    topic, header, _ = wire(good)
    probs = np.array([row, row], np.float32)
    assert decoded_or_reason([topic, header, probs.tobytes()]) == "malformed"
    fields = msgpack.unpackb(header)
    fields["confidences"] = [confidence, 0.5]
    assert decoded_or_reason([topic, msgpack.packb(fields), wire(good)[2]]) == "malformed"


def test_every_sample_message_decodes_back_to_itself() -> None:
    for msg in sample_messages():
        back = messages.decode(wire(msg))
        assert type(back) is type(msg) and back.camera == msg.camera and back.seq == msg.seq and back.ts == msg.ts
