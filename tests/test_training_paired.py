"""The paired comparison of two models (training.paired) and ``emopipe-evaluate --against``."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from emopipe.config import DEFAULT_MODEL
from training.data import DEFAULT_DATA, load_folder
from training.paired import Paired, compare, format_paired, sign_test

SHIPPED = DEFAULT_MODEL


def test_sign_test_matches_the_binomial_tails_worked_by_hand() -> None:
    assert sign_test(0, 10) == pytest.approx(2 / 1024)
    # 3 against 7: 2 * (C(10,0) + C(10,1) + C(10,2) + C(10,3)) / 2^10
    assert sign_test(3, 7) == pytest.approx(2 * (1 + 10 + 45 + 120) / 1024)
    assert sign_test(7, 3) == sign_test(3, 7)


def test_sign_test_is_one_for_an_even_split_or_no_disagreement() -> None:
    assert sign_test(5, 5) == 1.0
    assert sign_test(0, 0) == 1.0


def test_sign_test_of_the_model_cards_comparison() -> None:
    """157 against 113 faces, the card's comparison of the shipped file with its predecessor."""
    assert sign_test(157, 113) == pytest.approx(0.0087, abs=0.0002)


def test_sign_test_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match="negative"):
        sign_test(-1, 4)


def test_compare_counts_each_kind_of_face() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 0])
    first = np.array([0, 1, 2, 0, 0, 5, 0, 1])  # right on faces 0, 1, 2, 5
    second = np.array([0, 0, 2, 3, 4, 0, 0, 1])  # right on faces 0, 2, 3, 4
    assert compare(first, second, labels) == Paired(faces=8, only_first=2, only_second=2, both=2)
    assert compare(second, labels, labels) == Paired(faces=8, only_first=0, only_second=4, both=4)


def test_compare_names_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3,\) and \(4,\)"):
        compare(np.zeros(3, int), np.zeros(4, int), np.zeros(3, int))


def test_format_paired_states_counts_and_p_value() -> None:
    text = format_paired(Paired(100, 10, 0, 60), "new.onnx", "old.onnx")
    assert "10 right only by new.onnx, 0 only by old.onnx, 60 by both" in text
    assert f"p = {2 / 1024:.3g}" in text


ort = pytest.importorskip("onnxruntime")


def _write_faces_csv(path: Path, count: int) -> Path:
    """``count`` real PublicTest faces as a Kaggle-format CSV."""
    images, labels = load_folder(DEFAULT_DATA / "test")
    picked = np.random.default_rng(1).choice(len(labels), count, replace=False)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("emotion", "pixels", "Usage"))
        for i in picked:
            writer.writerow((int(labels[i]), " ".join(map(str, images[i].ravel())), "PublicTest"))
    return path


@pytest.mark.skipif(not (DEFAULT_DATA / "test").is_dir(), reason=f"FER-2013 not found at {DEFAULT_DATA}")
def test_evaluate_against_itself_agrees_on_every_face(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.evaluate import main

    data = _write_faces_csv(tmp_path / "faces.csv", 120)
    assert main([str(SHIPPED), "--data", str(data), "--against", str(SHIPPED), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    correct = round(json.loads((tmp_path / "r.json").read_text())["accuracy"] * 120)
    assert 0 < correct < 120
    match = re.search(r"paired on 120 faces: 0 right only by .*, 0 only by .*, (\d+) by both; sign test p = 1\b", out)
    assert match and int(match.group(1)) == correct


@pytest.mark.skipif(not (DEFAULT_DATA / "test").is_dir(), reason=f"FER-2013 not found at {DEFAULT_DATA}")
def test_evaluate_against_a_model_with_other_labels_names_it(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from training.evaluate import main

    model = onnx.load(str(SHIPPED))
    for entry in model.metadata_props:
        if entry.key == "labels":
            entry.value = json.dumps(list(reversed(json.loads(entry.value))))
    other = tmp_path / "reversed.onnx"
    onnx.save(model, str(other))
    data = _write_faces_csv(tmp_path / "faces.csv", 20)
    with pytest.raises(SystemExit, match="reversed.onnx: labels"):
        main([str(SHIPPED), "--data", str(data), "--against", str(other)])
