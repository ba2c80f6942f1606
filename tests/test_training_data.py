"""FER-2013 loaders: both distributed layouts, and every malformed case stops with a named error."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from emopipe.labels import EMOTIONS
from training.data import DatasetError, load_csv, load_folder, load_splits
from training.pack import pack


def _pixels(value: int, count: int = 48 * 48) -> str:
    return " ".join([str(value)] * count)


def _write_csv(
    path: Path, rows: list[tuple[object, str, str]], header: tuple[str, ...] = ("emotion", "pixels", "Usage")
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


def test_pack_round_trips_the_folders_pixel_for_pixel(tmp_path: Path) -> None:
    root = _fer_folders(tmp_path / "fer")
    counts = pack(root, tmp_path / "packed.npz")
    assert counts == {"train": 5, "test": 3}
    (train_x, train_y), (test_x, test_y) = load_splits(tmp_path / "packed.npz")
    (want_train_x, want_train_y), (want_test_x, want_test_y) = load_splits(root)
    np.testing.assert_array_equal(train_x, want_train_x)
    np.testing.assert_array_equal(test_x, want_test_x)
    assert train_y.tolist() == want_train_y.tolist() and test_y.tolist() == want_test_y.tolist()
    assert train_y.dtype == np.int64 and train_x.std() > 50  # noise faces, really decoded
    with np.load(tmp_path / "packed.npz") as packed:
        prefix = len(packed["train_prefix"])
        stored = len(packed["train_bytes"])
    files = sum(p.stat().st_size for p in (root / "train").rglob("*.jpg"))
    assert prefix > 100 and stored == files - 5 * prefix  # the shared JPEG header is kept once


def test_pack_stops_at_a_bad_image_and_names_it(tmp_path: Path) -> None:
    root = _fer_folders(tmp_path / "fer")
    _write_face(root / "test" / "happy" / "big.png", 1, size=(64, 64))
    with pytest.raises(DatasetError, match=r"big\.png: image is 64x64"):
        pack(root, tmp_path / "packed.npz")
    assert not (tmp_path / "packed.npz").exists()


def test_a_damaged_or_foreign_archive_is_named(tmp_path: Path) -> None:
    root = _fer_folders(tmp_path / "fer")
    pack(root, tmp_path / "packed.npz")
    with np.load(tmp_path / "packed.npz") as packed:
        arrays = {key: packed[key] for key in packed.files}
    first = arrays["test_names"][0].decode()
    arrays["test_prefix"][:2] = 0  # no JPEG start-of-image marker: no test image decodes
    np.savez(tmp_path / "damaged.npz", **arrays)
    with pytest.raises(DatasetError, match=rf"damaged\.npz:{first}: not a readable image"):
        load_splits(tmp_path / "damaged.npz")
    arrays["train_labels"][0] = 9
    np.savez(tmp_path / "label.npz", **arrays)
    with pytest.raises(DatasetError, match=r"train has a label outside 0\.\.6"):
        load_splits(tmp_path / "label.npz")
    np.savez(tmp_path / "foreign.npz", x_train=np.zeros(3))
    with pytest.raises(DatasetError, match="not a training.pack archive"):
        load_splits(tmp_path / "foreign.npz")
    with pytest.raises(DatasetError, match="packed data set not found"):
        load_splits(tmp_path / "absent.npz")
