"""lightsum.events: one reader of a run's TensorBoard files, each step of a resumed run counted once."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from conftest import log_attempt

from lightsum import errors
from lightsum.errors import CannotWrite, DamagedFile
from lightsum.events import NamedEventWriter, read_scalars
from lightsum.report import read_run


def test_report_counts_a_resumed_runs_relogged_epochs_once(tmp_path: Path) -> None:
    # A job requeued after epoch 3 resumes from the checkpoint of epoch 1: it logs epochs 2 and 3
    # again, with other values, into a second event file of the same run folder. Both files are
    # named in the same second; as text, the second attempt's counter 10 sorts before 9.
    requeued = tmp_path / "default" / "version_0"
    requeued.mkdir(parents=True)
    log_attempt(
        requeued,
        {0: (0.5, 0.9), 1: (0.6, 0.9), 2: (0.7, 0.9), 3: (0.99, 0.995)},
        "events.out.tfevents.1700000000.node-1.4242.9",
    )
    log_attempt(
        requeued,
        {2: (0.8, 0.85), 3: (0.9, 0.91), 4: (0.95, 0.96), 5: (0.93, 0.97)},
        "events.out.tfevents.1700000000.node-1.4242.10",
    )
    series = read_scalars(requeued).series
    assert [step for step, _ in series["val/min_recall"]] == [9, 19, 29, 39, 49, 59]  # epoch 3: the second attempt's
    assert series["val/min_recall"][3][1] == pytest.approx(0.9)
    run = read_run(requeued)
    assert [e for e, _ in run.by_epoch("val/min_recall")] == [0, 1, 2, 3, 4, 5]
    assert run.best == pytest.approx({"recall_0": 0.95, "recall_1": 0.96, "min_recall": 0.95, "epoch": 4, "epochs": 6})
    # A second attempt that stopped before the first one's last epoch: that epoch is not the run's.
    abandoned = tmp_path / "default" / "version_1"
    abandoned.mkdir()
    log_attempt(
        abandoned,
        {0: (0.5, 0.9), 1: (0.6, 0.9), 2: (0.7, 0.9), 3: (0.99, 0.995)},
        "events.out.tfevents.1700000000.node-1.4242.0",
    )
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


# --- damaged event files and failed writes ------------------------------------------------------

EVENTS = "events.out.tfevents.1700000000.node.1.0"


def damage(run: Path, how: str) -> Path:
    """A run folder's second event file, damaged ``how``; returns it."""
    events = run / "events.out.tfevents.1700000100.node.2.0"
    if how == "a folder":
        events.mkdir()
    elif how == "a fifo":
        os.mkfifo(events)  # a reader would wait on it forever
    elif how == "a broken link":
        events.symlink_to(run / "gone")
    elif how == "garbage":
        events.write_bytes(bytes(range(256)) * 8)
    return events


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("a folder", "a folder, not an event file"),
        ("a fifo", "a fifo, device or socket, not an event file"),
        ("a broken link", "a broken link, not an event file"),
        ("garbage", "not a TensorBoard event file (no event in it can be read)"),
    ],
)
def test_a_damaged_event_file_is_named(how: str, problem: str, tmp_path: Path) -> None:
    run = tmp_path / "default" / "version_0"
    run.mkdir(parents=True)
    log_attempt(run, {0: (0.5, 0.9)}, EVENTS)
    events = damage(run, how)
    with pytest.raises(DamagedFile) as err:
        read_scalars(run)
    assert (err.value.path, err.value.problem) == (events, problem)


def test_an_unreadable_event_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As root, mode bits do not stop reading: the read itself fails, as it would for another user.
    from tensorboard.compat.tensorflow_stub.io import gfile

    log_attempt(tmp_path, {0: (0.5, 0.9)}, EVENTS)

    def denied(fs, filename, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), filename)

    monkeypatch.setattr(gfile.LocalFileSystem, "read", denied)
    with pytest.raises(DamagedFile, match=f"^{tmp_path / EVENTS}: cannot be read: Permission denied$"):
        read_scalars(tmp_path)


def test_an_event_file_cut_short_is_read_up_to_its_last_whole_event(tmp_path: Path) -> None:
    # A writer killed mid-record leaves a partial last record: TensorBoard reads up to it; so does lightsum.
    log_attempt(tmp_path, {0: (0.5, 0.9), 1: (0.6, 0.9)}, EVENTS)
    events = tmp_path / EVENTS
    whole = read_scalars(tmp_path).series
    events.write_bytes(events.read_bytes()[:-7])
    cut = read_scalars(tmp_path).series
    assert cut["val/min_recall"] == whole["val/min_recall"]
    assert cut["epoch"] == whole["epoch"][:-1]  # the last event written


@pytest.mark.parametrize("debug", ["", "1"])
def test_an_event_file_that_cannot_be_written_is_named_once(
    debug: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk: the write fails in TensorBoard's writer thread without a file name; the main thread
    # hears of it at its next write or flush, as CannotWrite naming the run folder's event file. The
    # thread's own traceback is silenced, unless LIGHTSUM_DEBUG asks for every traceback.
    import threading

    from tensorboard.compat.tensorflow_stub.io import gfile
    from torch.utils.tensorboard import SummaryWriter

    def full(fs, filename, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    printed = []
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(args.exc_type))
    monkeypatch.setenv("LIGHTSUM_DEBUG", debug)
    writer = SummaryWriter(tmp_path)
    guarded = NamedEventWriter(writer.file_writer.event_writer)
    writer.file_writer.event_writer = guarded
    monkeypatch.setattr(gfile.LocalFileSystem, "append", full)
    message = f"^cannot write the TensorBoard event file in {tmp_path}: No space left on device$"
    with errors.quiet_writer_threads(), pytest.raises(CannotWrite, match=message):
        writer.add_scalar("val/min_recall", 0.5, 0)
        writer.flush()
    assert printed == ([OSError] if debug else [])
    with pytest.raises(CannotWrite, match=message):
        writer.add_scalar("val/min_recall", 0.5, 1)
    writer.close()  # after the error: nothing more to write, nothing raised again


def test_lightnings_wrapping_of_a_failed_write_is_looked_under() -> None:
    # Lightning's TensorBoardLogger.log_metrics raises ValueError("you tried to log ...") from any error.
    failed = CannotWrite("x/events.out.tfevents.1", OSError(errno.EROFS, os.strerror(errno.EROFS)))
    try:
        raise ValueError("\n you tried to log 0.5 which is currently not supported.") from failed
    except ValueError as err:
        assert errors.what_went_wrong(err) is failed
    assert errors.what_went_wrong(ValueError("other")).args == ("other",)
