"""lightsum.events: one reader of a run's TensorBoard files, each step of a resumed run counted once."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import log_attempt
from lightsum.events import read_scalars
from lightsum.report import read_run


def test_report_counts_a_resumed_runs_relogged_epochs_once(tmp_path: Path) -> None:
    # A job requeued after epoch 3 resumes from the checkpoint of epoch 1: it logs epochs 2 and 3
    # again, with other values, into a second event file of the same run folder. Both files are
    # named in the same second; as text, the second attempt's counter 10 sorts before 9.
    requeued = tmp_path / "default" / "version_0"
    requeued.mkdir(parents=True)
    log_attempt(requeued, {0: (0.5, 0.9), 1: (0.6, 0.9), 2: (0.7, 0.9), 3: (0.99, 0.995)},
                "events.out.tfevents.1700000000.node-1.4242.9")
    log_attempt(requeued, {2: (0.8, 0.85), 3: (0.9, 0.91), 4: (0.95, 0.96), 5: (0.93, 0.97)},
                "events.out.tfevents.1700000000.node-1.4242.10")
    series = read_scalars(requeued).series
    assert [step for step, _ in series["val/min_recall"]] == [9, 19, 29, 39, 49, 59]  # epoch 3: the second attempt's
    assert series["val/min_recall"][3][1] == pytest.approx(0.9)
    run = read_run(requeued)
    assert [e for e, _ in run.by_epoch("val/min_recall")] == [0, 1, 2, 3, 4, 5]
    assert run.best == pytest.approx({"recall_0": 0.95, "recall_1": 0.96, "min_recall": 0.95, "epoch": 4, "epochs": 6})
    # A second attempt that stopped before the first one's last epoch: that epoch is not the run's.
    abandoned = tmp_path / "default" / "version_1"
    abandoned.mkdir()
    log_attempt(abandoned, {0: (0.5, 0.9), 1: (0.6, 0.9), 2: (0.7, 0.9), 3: (0.99, 0.995)},
                "events.out.tfevents.1700000000.node-1.4242.0")
    log_attempt(abandoned, {2: (0.8, 0.85)}, "events.out.tfevents.1700000100.node-2.77.0")
    run = read_run(abandoned)
    assert run.best == pytest.approx({"recall_0": 0.8, "recall_1": 0.85, "min_recall": 0.8, "epoch": 2, "epochs": 3})


def test_a_test_or_validate_file_adds_its_points_and_no_training_time(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "default" / "version_0"
    run.mkdir(parents=True)
    log_attempt(run, {0: (0.5, 0.9), 1: (0.6, 0.9), 2: (0.7, 0.95)}, "events.out.tfevents.1700000000.node.1.0")
    trained = read_scalars(run)
    with SummaryWriter(run, filename_suffix=".test") as writer:  # what `test` and `validate` add
        writer.add_scalar("test/min_recall", 0.66, 18)
        writer.add_scalar("val/min_recall", 0.6, 19)  # validate: epoch 1 again, at its step
    scalars = read_scalars(run)
    assert scalars.series["val/min_recall"] == [(9, 0.5), (19, pytest.approx(0.6)), (29, pytest.approx(0.7))]
    assert scalars.series["test/min_recall"] == [(18, pytest.approx(0.66))]
    assert scalars.seconds == trained.seconds
