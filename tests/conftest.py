from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from lightsum.events import read_scalars

REPO = Path(__file__).resolve().parents[1]
# The run configs, and the sweep grids beside them (a grid maps `strategies` to lists of overrides).
GRIDS = [REPO / "configs" / "strategies.yaml", REPO / "configs" / "strategies-files.yaml"]
CONFIGS = sorted(set((REPO / "configs").rglob("*.yaml")) - set(GRIDS))


def tiny(root: Path, epochs: int = 2) -> list[str]:
    """CLI overrides that make any config run in seconds, writing under ``root``."""
    return [
        f"--trainer.logger.init_args.save_dir={root}",
        f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false",
        "--data.num_samples=600",
        "--data.test_samples=500",
        "--model.hidden_size=8",
        "--data.calibration_per_sum=20",  # 600 calibration and 200 boundary sequences, not 30k and 10k
        "--data.boundary_per_sum=20",
    ]


def tiny_files(root: Path, train: Path, epochs: int = 2) -> list[str]:
    """configs/files.yaml on ``train`` (a ``write_sequences`` file), made to run in seconds under ``root``."""
    return [
        "--config",
        str(REPO / "configs" / "files.yaml"),
        f"--data.train_path={train}",
        f"--trainer.logger.init_args.save_dir={root}",
        f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false",
        "--model.hidden_size=8",
    ]


def srun_variables(job_id: str) -> dict[str, str]:
    """What srun sets for a 1-task job on one node: enough for Lightning to detect SLURM."""
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "lightsum",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODELIST": "127.0.0.1",
    }


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a run folder: tag -> [(step, value)] by step (``lightsum.events``)."""
    return read_scalars(run_dir).series


def lightsum_process(*args: str, cwd: Path = REPO, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``python -m lightsum ARGS`` in a real process, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "lightsum", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, **kwargs
    )


def log_attempt(run_dir: Path, epochs: dict[int, tuple[float, float]], name: str) -> None:
    """One attempt of a fit, as Lightning logs it: per validated epoch of 10 steps, train/loss at
    each step, and val/recall_0, val/recall_1, val/min_recall and epoch at the step the epoch
    ended; the event file renamed to ``name``."""
    before = set(run_dir.glob("events.out.tfevents.*"))
    writer = SummaryWriter(run_dir)
    for epoch, (recall_0, recall_1) in epochs.items():
        step = 10 * epoch + 9
        for s in range(10 * epoch, step + 1):
            writer.add_scalar("train/loss", 1 / (s + 1), s)
        for tag, value in (
            ("val/recall_0", recall_0),
            ("val/recall_1", recall_1),
            ("val/min_recall", min(recall_0, recall_1)),
            ("epoch", epoch),
        ):
            writer.add_scalar(tag, value, step)
    writer.close()
    (new,) = set(run_dir.glob("events.out.tfevents.*")) - before
    new.rename(run_dir / name)


class FullDisk:
    """A file lightsum.atomic opens whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, path, mode, room: int) -> None:
        self.file, self.room = open(path, mode), room

    def write(self, data) -> int:
        if len(data) > self.room:
            import errno

            self.file.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch):
    """``full_disk(room)``: from now on, files lightsum writes atomically fill the disk after ``room`` bytes."""
    from lightsum import atomic

    def fill(room: int) -> None:
        monkeypatch.setattr(atomic, "open", lambda path, mode, **_: FullDisk(path, mode, room), raising=False)

    return fill


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node SLURM cluster (tests/slurm_cluster.py), started once for the session and
    torn down with every job's processes; skips where Slurm is not installed or not root."""
    from slurm_cluster import missing, start_cluster

    why = missing()
    if why:
        pytest.skip(f"needs a local Slurm: {why}")
    cluster = start_cluster()
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    return tmp_path / "logs"


FITTED_EPOCHS = 3


@pytest.fixture(scope="session")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    """One tiny default fit of FITTED_EPOCHS epochs, shared by the tests that only read its run folder."""
    from lightsum.cli import main

    return main(["fit", *tiny(tmp_path_factory.mktemp("logs"), epochs=FITTED_EPOCHS)])


@pytest.fixture
def run_dir(fitted) -> Path:
    return Path(fitted.trainer.log_dir)


def toy_sequences(
    n: int = 400, steps: str = "numbers", features: int = 1, minority: float = 0.1, seed: int = 0, variable: bool = True
) -> dict:
    """A small learnable imbalanced set: class 1 (a ``minority`` share) is marked at each sequence's
    own last step (numbers: +2 on feature 0; tokens: "X"), so reading past the end or padding the
    wrong side shows. Returns ``x`` padded (numbers (n, L, F) float32; tokens: lists), ``y`` and ``lengths``."""
    import numpy as np

    g = np.random.default_rng(seed)
    lengths = g.integers(5, 21, n) if variable else np.full(n, 12)
    y = (g.random(n) < minority).astype(np.int64)
    y[:2] = [0, 1]  # both classes whatever n
    if steps == "tokens":
        rows = [list(g.choice(list("ACGT"), int(k))) for k in lengths]
        for row, label in zip(rows, y):
            row[-1] = "X" if label else row[-1]
        return {"x": rows, "y": y, "lengths": lengths}
    x = np.zeros((n, int(lengths.max()), features), dtype=np.float32)
    for i, k in enumerate(lengths):
        x[i, :k] = g.normal(size=(k, features))
        x[i, k - 1, 0] += 2.0 * y[i]
    return {"x": x, "y": y, "lengths": lengths}


def write_sequences(path: Path, data: dict, labels: bool = True, label_names: tuple[str, str] | None = None) -> Path:
    """``data`` (from ``toy_sequences``) as ``path``'s format: .npz, .csv or .parquet."""
    import numpy as np

    y = data["y"] if label_names is None else np.array(label_names)[data["y"]]
    x, lengths = data["x"], data["lengths"]
    rows = [row if isinstance(x, list) else x[i, : lengths[i]] for i, row in enumerate(x)]
    if path.suffix == ".npz":
        arrays = {"x": x, "lengths": lengths} | ({"y": y} if labels else {})
        np.savez(path, **arrays)
    elif path.suffix == ".csv":
        import csv

        with open(path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["id", "sequence", *(["label"] if labels else [])])
            for i, row in enumerate(rows):
                steps = " ".join(str(v) if isinstance(x, list) else f"{float(v[0]):.6g}" for v in row)
                out.writerow([i, steps, *([y[i]] if labels else [])])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        seqs = [list(r) if isinstance(x, list) else r.tolist() for r in rows]
        if not isinstance(x, list) and x.shape[2] == 1:
            seqs = [[v[0] for v in s] for s in seqs]
        table = {"sequence": seqs} | ({"label": list(y)} if labels else {})
        pq.write_table(pa.table(table), path)
    return path
