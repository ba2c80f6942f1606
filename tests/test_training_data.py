"""FER-2013 loaders: both distributed layouts, and every malformed case stops with a named error."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from emopipe.labels import EMOTIONS
from training.data import DatasetError, load_csv, load_folder, load_splits, subset, training_splits


def _pixels(value: int, count: int = 48 * 48) -> str:
    return " ".join([str(value)] * count)


def _write_csv(
    path: Path, rows: list[tuple[object, ...]], header: tuple[str, ...] = ("emotion", "pixels", "Usage")
) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_face(path: Path, value: int, size: tuple[int, int] = (48, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full(size, value, np.uint8))


def test_csv_splits_rows_by_usage_column_not_position(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "fer.csv",
        [
            (3, _pixels(10), "PrivateTest"),
            (0, _pixels(20), "Training"),
            (6, _pixels(30), "PublicTest"),
            (1, _pixels(40), "Training"),
        ],
    )
    splits = load_csv(path)
    train_x, train_y = splits["Training"]
    assert train_y.tolist() == [0, 1]
    assert train_x.shape == (2, 48, 48) and train_x.dtype == np.uint8
    assert train_x[1, 0, 0] == 40
    assert splits["PublicTest"][1].tolist() == [6]
    assert splits["PrivateTest"][1].tolist() == [3]
    assert splits["PrivateTest"][0][0, 47, 47] == 10


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ((2, _pixels(1, 2303), "Training"), "2303 pixel values"),
        ((7, _pixels(1), "Training"), "unknown emotion id 7"),
        (("x", _pixels(1), "Training"), "not an integer"),
        ((2, _pixels(1), "Validation"), "unknown Usage 'Validation'"),
        ((2, _pixels(300), "Training"), "outside 0..255"),
    ],
)
def test_csv_malformed_row_is_named_with_file_and_line(
    tmp_path: Path, row: tuple[object, str, str], message: str
) -> None:
    path = _write_csv(tmp_path / "fer.csv", [(0, _pixels(5), "Training"), row])
    with pytest.raises(DatasetError, match=message) as err:
        load_csv(path)
    assert f"{path}:3" in str(err.value)


def test_csv_missing_column_and_missing_file(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "fer.csv", [(0, _pixels(5))], header=("emotion", "pixels"))
    with pytest.raises(DatasetError, match="lacks column.*Usage"):
        load_csv(path)
    with pytest.raises(DatasetError, match="not found"):
        load_csv(tmp_path / "absent.csv")


def test_folder_labels_follow_fer_order_not_alphabetical(tmp_path: Path) -> None:
    # Alphabetically 'neutral' sorts before 'sad'; FER-2013 gives it id 6.
    _write_face(tmp_path / "neutral" / "a.jpg", 100)
    _write_face(tmp_path / "angry" / "b.png", 50)
    _write_face(tmp_path / "sad" / "c.png", 200)
    images, labels = load_folder(tmp_path)
    assert sorted(labels.tolist()) == [EMOTIONS.index("angry"), EMOTIONS.index("sad"), EMOTIONS.index("neutral")]
    assert EMOTIONS.index("neutral") == 6
    by_label = dict(zip(labels.tolist(), images[:, 0, 0].tolist(), strict=True))
    assert by_label[0] == 50 and by_label[4] == 200
    assert abs(by_label[6] - 100) <= 2  # JPEG


def test_folder_wrong_size_image_is_named(tmp_path: Path) -> None:
    _write_face(tmp_path / "happy" / "ok.png", 1)
    _write_face(tmp_path / "happy" / "big.png", 1, size=(64, 64))
    with pytest.raises(DatasetError, match=r"big\.png: image is 64x64, expected 48x48"):
        load_folder(tmp_path)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: (root / "happy").mkdir(parents=True), "happy: empty emotion folder"),
        (lambda root: _write_face(root / "contempt" / "x.png", 1), "contempt: unknown emotion folder"),
        (lambda root: root.mkdir(), "no emotion sub-folders"),
        (
            lambda root: (root / "fear").mkdir(parents=True) or (root / "fear" / "notes.txt").write_text("x"),
            r"notes\.txt: not an image",
        ),
        (
            lambda root: (root / "fear").mkdir(parents=True) or (root / "fear" / "broken.jpg").write_bytes(b"no jpeg"),
            r"broken\.jpg: not a readable image",
        ),
    ],
)
def test_folder_malformed_layout_is_named(tmp_path: Path, setup, message: str) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "train"
    setup(root)
    with pytest.raises(DatasetError, match=message):
        load_folder(root)


def test_missing_folder_and_split_roots(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="folder not found"):
        load_folder(tmp_path / "nowhere")
    _write_face(tmp_path / "train" / "happy" / "a.png", 1)
    with pytest.raises(DatasetError, match="test: folder not found"):
        load_splits(tmp_path)


def test_splits_from_csv_give_training_and_publictest(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "fer2013.csv",
        [(5, _pixels(1), "Training"), (4, _pixels(2), "PublicTest"), (2, _pixels(3), "PrivateTest")],
    )
    (train_x, train_y), (val_x, val_y) = load_splits(path)
    assert train_y.tolist() == [5] and val_y.tolist() == [4]
    assert val_x[0, 0, 0] == 2


def _write_noise_face(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8))


def _fer_folders(root: Path) -> Path:
    for split, count in (("train", 5), ("test", 3)):
        for i in range(count):
            emotion = EMOTIONS[(i * 3) % len(EMOTIONS)]
            _write_noise_face(root / split / emotion / f"{split}_{i}.jpg", seed=i + 10 * count)
    return root


def test_a_limited_run_decodes_only_its_faces_and_gets_those_of_the_whole(tmp_path: Path) -> None:
    """``--limit`` on image folders reads just the faces it draws: the same faces, labels and
    order as cutting the whole data set, and no cache file is written for them."""
    root = _fer_folders(tmp_path / "fer")
    (train_x, train_y), (test_x, test_y) = training_splits(root, tmp_path / "cache", limit=3, seed=4)
    (all_train, all_test) = load_splits(root)
    for (x, y), whole in (((train_x, train_y), all_train), ((test_x, test_y), all_test)):
        want_x, want_y = subset(whole, 3, seed=4)
        np.testing.assert_array_equal(x, want_x)
        assert y.tolist() == want_y.tolist() and len(y) == 3
    assert train_x.std() > 50  # noise faces, really decoded
    assert not (tmp_path / "cache").exists()
    (x, _), _ = training_splits(root, tmp_path / "cache")  # the whole set is cached
    assert len(x) == 5 and len(list((tmp_path / "cache").glob("fer2013-*.npz"))) == 1
    np.testing.assert_array_equal(training_splits(root, tmp_path / "cache")[0][0], x)
