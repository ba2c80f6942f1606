"""emopipe evaluate: the labels file, the figures against hand counts, and a real run of the
pipeline on two short clips and a few stills of the real carphone face."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from deploy.evaluate import NO_FACE, Clip, Item, LabelsError, markdown, read_labels, report, summarise
from deploy.measure import write_video
from emopipe.labels import EMOTIONS

REPO = Path(__file__).resolve().parent.parent


def test_labels_map_aliases_keep_other_words_unscored_and_default_the_group(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "file,label\na.mp4, Anger\nb.jpg,sadness\nc.png,FEARFUL\nd.mp4,surprised\ne.mp4,disgusted\nf.mp4,calm\n"
    )
    items = read_labels(csv)
    assert [i.label for i in items] == ["angry", "sad", "fear", "surprise", "disgust", "calm"]
    assert [i.scored for i in items] == [True] * 5 + [False]
    assert {i.group for i in items} == {"all"} and items[0].path == tmp_path / "a.mp4"
    assert [i.is_video for i in items] == [True, False, False, True, True, True]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("path,emotion\na.mp4,happy\n", "file,label"),
        ("file,label\n", "lists no files"),
        ("file,label\n,happy\n", "line 2"),
    ],
)
def test_a_labels_file_that_cannot_be_used_is_named(tmp_path: Path, text: str, words: str) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    with pytest.raises(LabelsError, match=words) as err:
        read_labels(csv)
    assert str(csv) in str(err.value)


def _clip(name: str, label: str, frames: list[str | None], group: str = "g") -> Clip:
    """A clip whose subject got these per-frame labels (None: no face), each with all of the
    probability on its label except a little on neutral; smoothed labels lag one frame."""
    clip = Clip(Item(name, Path(name), label, group))
    previous = None
    for said in frames:
        if said is None:
            clip.add(None)
            continue
        probs = [0.0] * 7
        probs[EMOTIONS.index(said)] += 0.9
        probs[EMOTIONS.index("neutral")] += 0.1
        clip.add({"emotion": said, "probabilities": probs, "smoothed": {"emotion": previous or said}})
        previous = said
    return clip


def test_clip_and_frame_figures_match_a_hand_count() -> None:
    clips = [
        _clip("a.mp4", "happy", ["happy", "happy", "sad", None]),  # majority happy, smoothed happy
        _clip("b.mp4", "sad", ["neutral", "sad", "sad", "neutral", "neutral"]),  # majority neutral; smoothed neutral
        _clip("c.jpg", "angry", ["angry"], group="h"),
        _clip("d.jpg", "fear", [None], group="h"),  # no face: wrong by every rule
        _clip("e.mp4", "calm", ["neutral", "neutral"]),  # not scored
    ]
    s = summarise(clips)
    assert s["clips"] == 4
    # majority: a right, b wrong (neutral 3 of 5), c right, d no face -> 2/4
    assert s["clip_accuracy"]["majority"] == 0.5
    # smoothed labels: a happy,happy,happy (lagging the sad) -> happy; b neutral,neutral,sad,sad,neutral -> neutral
    assert s["clip_accuracy"]["smoothed"] == 0.5
    # mean probability: b's sums are sad 1.8, neutral 3 x 0.9 + 5 x 0.1 = 3.2 -> neutral
    assert s["clip_accuracy"]["mean_probability"] == 0.5
    # frames with a face: 3 + 5 + 1 = 9; right: 2 (a) + 2 (b) + 1 (c) = 5
    assert s["frame_accuracy"] == round(5 / 9, 4)
    assert s["frames"] == 4 + 5 + 1 + 1 and s["face_found_rate"] == round(9 / 11, 4)
    columns = s["confusion"]["columns"]
    assert columns == [*EMOTIONS, NO_FACE]
    expected = np.zeros((7, 8), int)
    expected[EMOTIONS.index("happy"), columns.index("happy")] = 1
    expected[EMOTIONS.index("sad"), columns.index("neutral")] = 1
    expected[EMOTIONS.index("angry"), columns.index("angry")] = 1
    expected[EMOTIONS.index("fear"), columns.index(NO_FACE)] = 1
    assert s["confusion"]["matrix"] == expected.tolist()
    assert s["per_class"]["happy"] == {"clips": 1, "recall": 1.0}
    assert s["per_class"]["sad"] == {"clips": 1, "recall": 0.0}
    assert s["per_class"]["disgust"] == {"clips": 0, "recall": None}

    rep = report(clips, {"x.mp4": "no such file"}, "model.onnx")
    assert rep["groups"]["h"]["clips"] == 2 and rep["groups"]["h"]["clip_accuracy"]["majority"] == 0.5
    assert rep["groups"]["g"]["clips"] == 2 and rep["groups"]["g"]["frame_accuracy"] == round(4 / 8, 4)
    assert rep["unscored"] == {"calm": {"files": 1, "said": {"neutral": 1}}}
    text = markdown(rep)
    assert "| all files | 4 | 50.0% | 50.0% | 50.0% | 55.6% | 81.8% |" in text
    assert "| group h | 2 | 50.0% |" in text and "- x.mp4: no such file" in text
    assert "- calm: 1 files; said neutral 1" in text


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory, carphone_frames: list[np.ndarray]) -> Path:
    """Two 20-frame clips and three stills of the carphone face, a still with no face, a file
    that is not a video, and a row whose label is outside the model's classes."""
    root = tmp_path_factory.mktemp("evalset")
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))  # type: ignore[attr-defined]
    with_face = [
        i
        for i, f in enumerate(carphone_frames)
        if len(cascade.detectMultiScale(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), 1.1, 5, minSize=(40, 40)))
    ]
    starts = [i for i in with_face if all(j in with_face for j in range(i, i + 20))]
    assert starts, "carphone should show its face for 20 frames in a row somewhere"
    clip = carphone_frames[starts[0] : starts[0] + 20]
    write_video(root / "one.mp4", clip, 30.0)
    write_video(root / "two.mp4", [np.ascontiguousarray(f[:, ::-1]) for f in clip], 30.0)  # its mirror image
    assert len(with_face) >= 50
    for k, i in enumerate(with_face[:: len(with_face) // 3][:3]):
        cv2.imwrite(str(root / f"still{k}.png"), carphone_frames[i])
    cv2.imwrite(str(root / "blank.png"), np.full((144, 176, 3), 90, np.uint8))
    (root / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    (root / "labels.csv").write_text(
        "file,label,group\n"
        "one.mp4,neutral,clips\n"
        "two.mp4,happy,clips\n"
        "still0.png,neutral,stills\n"
        "still1.png,sadness,stills\n"
        "still2.png,neutral,stills\n"
        "blank.png,angry,stills\n"
        "broken.mp4,fear,clips\n"
        "two.mp4,contempt,clips\n"
    )
    return root


@pytest.fixture(scope="module")
def evaluated(small_set: Path) -> dict[str, Any]:
    out = small_set / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.launcher", "evaluate", str(small_set / "labels.csv"), "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return {
        "code": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "report": json.loads(out.read_text()),
    }


def test_evaluate_runs_the_pipeline_on_every_frame_and_every_still(evaluated: dict[str, Any]) -> None:
    files = {(f["file"], f["label"]): f for f in evaluated["report"]["files"]}
    assert files[("one.mp4", "neutral")]["frames"] == 20 and files[("two.mp4", "happy")]["frames"] == 20
    for clip in ("one.mp4", "neutral"), ("two.mp4", "happy"):  # the cascade finds the face in every frame
        assert files[clip]["with_face"] >= 15, files[clip]
    for k in range(3):
        still = next(f for (name, _), f in files.items() if name == f"still{k}.png")
        assert still["frames"] == 1 and still["with_face"] == 1, still
        assert sum(still["frame_labels"].values()) == 1 and still["majority"] in EMOTIONS
    blank = files[("blank.png", "angry")]
    assert blank["with_face"] == 0 and blank["majority"] == NO_FACE


def test_evaluate_names_the_unreadable_file_reports_the_others_and_exits_2(evaluated: dict[str, Any]) -> None:
    assert evaluated["code"] == 2
    rep = evaluated["report"]
    assert list(rep["failed"]) == ["broken.mp4"] and "not a video" in rep["failed"]["broken.mp4"]
    assert "- broken.mp4: not a video OpenCV can decode" in evaluated["stdout"]
    assert rep["overall"]["clips"] == 6  # two clips, four stills; not the broken file, not contempt


def test_evaluate_figures_agree_with_a_count_over_its_files(evaluated: dict[str, Any]) -> None:
    rep = evaluated["report"]
    scored = [f for f in rep["files"] if f["label"] in EMOTIONS]
    right = sum(f["majority"] == f["label"] for f in scored)
    assert rep["overall"]["clip_accuracy"]["majority"] == round(right / len(scored), 4)
    frames = sum(f["with_face"] for f in scored)
    assert rep["overall"]["frame_accuracy"] == round(
        sum(f["frame_labels"].get(f["label"], 0) for f in scored) / frames, 4
    )
    matrix = np.array(rep["overall"]["confusion"]["matrix"])
    columns = rep["overall"]["confusion"]["columns"]
    counted = Counter((f["label"], f["majority"]) for f in scored)
    for (label, said), n in counted.items():
        assert matrix[EMOTIONS.index(label), columns.index(said)] == n
    assert matrix.sum() == len(scored) == 6
    assert set(rep["groups"]) == {"clips", "stills"} and rep["groups"]["stills"]["clips"] == 4
    assert rep["unscored"]["contempt"]["files"] == 1
    assert "| all files | 6 |" in evaluated["stdout"] and "| group stills | 4 |" in evaluated["stdout"]
