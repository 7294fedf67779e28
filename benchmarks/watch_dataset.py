"""Convert seglearn's smartwatch exercise recordings into lightsum .npz files: one exercise against the rest.

The data: ``seglearn/data/watch_dataset.npy`` inside the seglearn 1.2.5 wheel on PyPI (BSD licence):
140 recordings of 6 IMU channels of a smartwatch (accelerometer ax, ay, az; gyroscope wx, wy, wz),
947-2618 steps each, 10 subjects, each doing 7 shoulder exercises twice (PEN, ABD, FEL, IR, ER,
TRAP, ROW). Nothing of it is committed to this repository: the script downloads the wheel with pip
and converts it.

Each recording is cut into windows of ``--window`` steps every ``--stride`` steps (a shorter tail is
dropped); a window's label is 1 when its recording is the ``--minority`` exercise, else 0. Subjects 9
and 10 are the test set, at its natural class ratio; subjects 1-8 are the training file (lightsum
carves its stratified validation split from it), where the minority's windows are thinned, by a
seeded random choice, to at most ``--share`` of the training windows.

    python benchmarks/watch_dataset.py                       # data/watch/train.npz and test.npz
    python benchmarks/watch_dataset.py --out /tmp/watch --minority ER --share 0.05 --seed 0
    python -m lightsum fit --config configs/files.yaml --data.train_path data/watch/train.npz \\
        --data.test_path data/watch/test.npz
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "seglearn==1.2.5"
MEMBER = "seglearn/data/watch_dataset.npy"
CLASSES = ["PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW"]  # the wheel's own y_labels, in label order
TEST_SUBJECTS = (9, 10)
MIN_TEST, MIN_TRAIN = 20, 30  # minority windows a recall can be measured on, and learned from


def load_watch(wheel_dir: Path | None) -> dict:
    """The pickled dict of the wheel (X, y, subject, y_labels, ...), from a downloaded wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(wheel_dir or tmp)
        wheels = sorted(where.glob("seglearn-1.2.5-*.whl"))
        if not wheels:
            # pip's own client, so an index or proxy configured for pip is used; --no-deps: the
            # data is all we need, not seglearn's dependencies.
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(where)],
                check=True,
            )
            wheels = sorted(where.glob("seglearn-1.2.5-*.whl"))
        raw = zipfile.ZipFile(wheels[0]).read(MEMBER)
    # allow_pickle: the file is a pickled dict, and unpickling can run code. It is acceptable for
    # this one file, from a pinned release of a known package; never load users' files this way
    # (lightsum itself reads .npz files with allow_pickle=False).
    data = np.load(io.BytesIO(raw), allow_pickle=True).item()
    if list(data.get("y_labels", CLASSES)) != CLASSES:
        raise SystemExit(f"unexpected class names in {MEMBER}: {data['y_labels']} (expected {CLASSES})")
    return data


def windows(data: dict, window: int, stride: int, minority: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every window of every recording: x (N, window, 6) float32, y 0/1, subject."""
    xs, ys, subjects = [], [], []
    for rec, label, subject in zip(data["X"], data["y"], data["subject"]):
        starts = range(0, len(rec) - window + 1, stride)
        xs.extend(np.asarray(rec[s : s + window], dtype=np.float32) for s in starts)
        ys.extend([int(label == minority)] * len(starts))
        subjects.extend([int(subject)] * len(starts))
    return np.stack(xs), np.asarray(ys, dtype=np.int64), np.asarray(subjects)


def thin(y: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted rows to keep: every majority window and at most ``share`` of the total as minority."""
    minority, majority = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    # m / (m + M) <= share  <=>  m <= share * M / (1 - share)
    keep = min(len(minority), int(share * len(majority) / (1 - share)))
    return np.sort(np.concatenate([majority, rng.choice(minority, size=keep, replace=False)]))


def counts(name: str, y: np.ndarray) -> str:
    return f"{name}: {len(y)} windows, {int(y.sum())} minority, minority share {y.mean():.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/watch"), help="folder of train.npz and test.npz")
    # ER (external rotation) by default: a rotation of the forearm that IR, its mirror movement,
    # resembles closely, so the task is neither trivial nor hopeless (PEN, TRAP, ROW separate almost
    # perfectly on a window's per-channel mean and spread alone).
    parser.add_argument("--minority", default="ER", choices=CLASSES, help="the exercise that is class 1")
    parser.add_argument("--window", type=int, default=100, help="steps per window")
    parser.add_argument("--stride", type=int, default=100, help="steps between window starts")
    parser.add_argument("--share", type=float, default=0.05, help="most minority share of training windows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the thinning")
    parser.add_argument("--wheel-dir", type=Path, help="a folder holding the seglearn 1.2.5 wheel (else: download)")
    args = parser.parse_args()
    if not 0 < args.share < 1 or args.window < 1 or args.stride < 1:
        parser.error("--share must be in (0, 1), --window and --stride positive")

    data = load_watch(args.wheel_dir)
    x, y, subject = windows(data, args.window, args.stride, CLASSES.index(args.minority))
    test = np.isin(subject, TEST_SUBJECTS)
    train_rows = np.flatnonzero(~test)[thin(y[~test], args.share, np.random.default_rng(args.seed))]
    splits = {"train": train_rows, "test": np.flatnonzero(test)}

    for name, rows, least in (("train", splits["train"], MIN_TRAIN), ("test", splits["test"], MIN_TEST)):
        found = int(y[rows].sum())
        assert found >= least, (
            f"the {name} split holds {found} minority windows ({args.minority}), fewer than {least}: "
            "use a shorter --window or --stride, or a larger --share"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        np.savez(args.out / f"{name}.npz", x=x[rows], y=y[rows])
        print(counts(f"{name} ({args.out / name}.npz)", y[rows]))
    print(f"minority: {args.minority} (class 1) against the other 6 exercises; test subjects {TEST_SUBJECTS}")


if __name__ == "__main__":
    main()
