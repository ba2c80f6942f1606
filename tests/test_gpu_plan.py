"""training/gpu_plan.sh: the model card's GPU plan, rehearsed end to end on 280 real Training
faces with this environment's Keras backend. Real training processes write real files, and
the plan stops, resumes and finishes as it does across the device's 10-minute calls."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

keras = pytest.importorskip("keras")

from emopipe.labels import EMOTIONS  # noqa: E402
from helpers import REPO  # noqa: E402
from training.data import DEFAULT_DATA  # noqa: E402
from training.models import load_checkpoint  # noqa: E402

if not (DEFAULT_DATA / "train").is_dir():
    pytest.skip(f"FER-2013 not found at {DEFAULT_DATA}", allow_module_level=True)

pytestmark = pytest.mark.slow

SCRIPT = REPO / "training" / "gpu_plan.sh"
OUTPUTS = {
    "emonet-wide-2-fp16.keras",
    "emonet-wide-3-fp16.keras",
    "student-averaged.keras",
    "emonet-wide-2-history.csv",
    "emonet-wide-3-history.csv",
    "student-history.csv",
}


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FER-2013 cut to 40 Training and 10 PublicTest faces per class, packed as for the device."""
    tmp = tmp_path_factory.mktemp("fer")
    for split, count in (("train", 40), ("test", 10)):
        for emotion in EMOTIONS:
            folder = tmp / "folders" / split / emotion
            folder.mkdir(parents=True)
            for image in sorted((DEFAULT_DATA / split / emotion).glob("*.jpg"))[:count]:
                shutil.copy(image, folder / image.name)
    out = tmp / "fer2013.npz"
    subprocess.run([sys.executable, "-m", "training.pack", str(tmp / "folders"), str(out)], cwd=REPO, check=True)
    return out


def advance(tmp: Path, data: Path, budget: int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "KERAS_BACKEND": keras.backend.backend(),
        "DATA": str(data),
        "RUNS": str(tmp / "runs"),
        "OUT": str(tmp / "out"),
        "BUDGET": str(budget),
        "TEACHER_EPOCHS": "1",
        "STUDENT_EPOCHS": "2",
    }
    return subprocess.run(["bash", str(SCRIPT), "advance"], env=env, capture_output=True, text=True, timeout=900)


def history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_missing_data_is_named(tmp_path: Path) -> None:
    result = advance(tmp_path, tmp_path / "absent.npz", 540)
    assert result.returncode == 2
    assert f"no {tmp_path / 'absent.npz'}: run prepare" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_plan_stops_resumes_and_finishes(tmp_path: Path, packed: Path) -> None:
    runs = tmp_path / "runs"

    short = advance(tmp_path, packed, 60)  # under the two minutes a training step needs
    assert short.returncode == 0, short.stderr
    assert "plan: too little time left for emonet-wide-2; call again" in short.stdout
    assert not (runs / "emonet-wide-2").exists()

    full = advance(tmp_path, packed, 1200)
    assert full.returncode == 0, full.stderr[-3000:]
    assert full.stdout.rstrip().splitlines()[-2] == "plan: done"
    assert {p.name for p in (tmp_path / "out").iterdir()} == OUTPUTS
    # Each re-measured model reports its accuracy: two teachers, then the averaged student.
    assert full.stdout.count(": PublicTest accuracy ") == 3
    assert [len(history(runs / n)) for n in ("emonet-wide-2", "emonet-wide-3", "student")] == [1, 1, 2]
    seeds = [json.loads((runs / n / "recipe.json").read_text())["seed"] for n in ("emonet-wide-2", "emonet-wide-3")]
    assert seeds == [2, 3]
    assert all((runs / n / "last.pt").is_file() for n in ("emonet-wide-2", "emonet-wide-3", "student"))
    assert sorted(p.name for p in (runs / "student" / "epochs").iterdir()) == ["epoch-01.keras", "epoch-02.keras"]

    teacher = load_checkpoint(tmp_path / "out" / "emonet-wide-3-fp16.keras")
    assert teacher.name == "emonet-wide"
    assert {str(w.dtype) for w in teacher.weights} == {"float16"}
    student = load_checkpoint(tmp_path / "out" / "student-averaged.keras")
    assert (student.name, student.count_params()) == ("emonet-slim", 494_335)
    # The student started from the shipped weights (66.7% on all of PublicTest), not from
    # scratch (about 1 in 7 right): on these 70 faces it is still far above chance.
    assert float(history(runs / "student")[0]["val_accuracy"]) > 0.4

    again = advance(tmp_path, packed, 1200)  # a finished plan trains nothing more
    assert again.returncode == 0, again.stderr[-3000:]
    assert "plan: done" in again.stdout and "PublicTest accuracy" not in again.stdout
    assert [len(history(runs / n)) for n in ("emonet-wide-2", "emonet-wide-3", "student")] == [1, 1, 2]
