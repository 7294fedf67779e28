"""A run folder's TensorBoard event files: every scalar series read back, each step counted once, and
a damaged file or a failed write named in one line."""

from __future__ import annotations

import os
import re
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightsum.errors import CannotWrite, DamagedFile

# events.out.tfevents.<creation time>.<host>.<pid>.<counter>[suffix]; the host may hold dots.
_EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.(.+)\.(\d+)\.(\d+)")


@dataclass
class RunScalars:
    """What a run folder's event files hold: ``series`` maps tag -> [(step, value)] sorted by
    step; ``seconds`` adds up the span of each file that logged training (``train/*``), from its
    creation to its last scalar."""

    series: dict[str, list[tuple[int, float]]]
    seconds: float


def read_scalars(run_dir: str | Path) -> RunScalars:
    """Every scalar series of a run folder.

    A resumed or requeued run adds an event file to its folder and re-logs the steps after the
    checkpoint it resumed from. The files are read one by one, oldest first, and each file that
    trained replaces, tag by tag, every point the older files logged from its own first step of
    that tag on: the re-logged steps count once, with the values of the attempt that continued,
    and a tail an abandoned attempt logged past them is dropped. A file of ``validate`` or
    ``test`` (no ``train/*`` tag) only adds its points. (TensorBoard's own reader, given the
    folder, reads files in name order, where ``...123.10`` sorts before ``...123.9``, and purges
    steps it sees going backwards.) A pause between a stop and a resume does not count in ``seconds``.
    """
    series: dict[str, dict[int, float]] = {}
    seconds = 0.0
    for acc in _event_files_oldest_first(Path(run_dir)):
        tags = [tag for tag in acc.Tags()["scalars"] if acc.Scalars(tag)]
        trains = any(tag.startswith("train/") for tag in tags)
        for tag in tags:
            points = acc.Scalars(tag)
            first = min(e.step for e in points) if trains else float("inf")
            kept = {step: value for step, value in series.get(tag, {}).items() if step < first}
            kept.update((e.step, e.value) for e in points)  # in file order: a step's last value wins
            series[tag] = kept
        if trains:
            seconds += max(e.wall_time for tag in tags for e in acc.Scalars(tag)) - acc.FirstEventTimestamp()
    return RunScalars({tag: sorted(points.items()) for tag, points in series.items()}, seconds)


def _event_files_oldest_first(path: Path) -> list[EventAccumulator]:
    """The loaded event files of a run folder, in the order they were created: by the creation
    time in their names, then their first event's time, then the writer's counter (a requeued job
    on another host must not sort before its first attempt)."""
    loaded = []
    for events in path.glob("events.out.tfevents.*"):
        acc = _load(events)
        try:
            first = acc.FirstEventTimestamp()
        except ValueError:
            if events.stat().st_size:  # every writer writes an event first: these bytes are not one
                raise DamagedFile(events, "not a TensorBoard event file (no event in it can be read)") from None
            continue  # empty (a writer killed before its first flush): nothing to read
        match = _EVENT_FILE.match(events.name)
        created, counter = (int(match[1]), int(match[4])) if match else (int(first), 0)
        loaded.append(((created, first, counter, events.name), acc))
    return [acc for _, acc in sorted(loaded, key=lambda item: item[0])]


def _load(events: Path) -> EventAccumulator:
    """One event file, read whole. A file cut short (a writer killed mid-record) is read up to its
    last whole event, as TensorBoard reads it.

    Raises:
        DamagedFile: it is not a regular file (a folder, a broken link, a fifo, which would block
            the reader), or it cannot be read.
    """
    kind = file_kind(events)
    if kind != "file":
        raise DamagedFile(events, f"{kind}, not an event file")
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    try:
        acc.Reload()
    except OSError as err:
        raise DamagedFile(events, f"cannot be read: {err.strerror or err}") from None
    return acc


def file_kind(path: Path) -> str:
    """What ``path`` is: ``"file"`` (a regular file, or a link to one), ``"missing"``, or, as said
    in an error, ``"a folder"``, ``"a broken link"``, ``"a fifo, device or socket"``."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a broken link" if path.is_symlink() else "missing"
    if stat.S_ISREG(mode):
        return "file"
    return "a folder" if stat.S_ISDIR(mode) else "a fifo, device or socket"


class EventWriteErrors(pl.Callback):
    """A TensorBoard event file that cannot be written (a full disk, a filesystem turned read-only
    mid-run) stops the command with ``CannotWrite`` naming the file.

    TensorBoard writes event files from a thread of its own; an OS error there is raised again in
    the main thread at the next write, which Lightning's logger turns into "you tried to log
    <value> which is currently not supported" (``errors.what_went_wrong`` looks under it). This
    wraps the event writer of each TensorBoard logger once it exists (``setup``), so that every
    write (Lightning's, the figures', the HPARAMS session's) names the file. The checkpoints
    written before stay as they were: each is written whole or not at all (``lightsum.atomic``).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.global_rank != 0:
            return  # other ranks hold no writer
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                file_writer = getattr(
                    logger.experiment, "file_writer", None
                )  # torch's SummaryWriter, or tensorboardX's
                if file_writer is not None and not isinstance(file_writer.event_writer, NamedEventWriter):
                    file_writer.event_writer = NamedEventWriter(file_writer.event_writer)


class NamedEventWriter:
    """TensorBoard's event file writer, whose OS errors are ``CannotWrite`` naming the file.

    After the first failure, writes raise it again, and ``flush`` and ``close`` do nothing (its
    thread has ended): Lightning's clean-up after the error runs through, and the error is reported
    once.
    """

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.failure: CannotWrite | None = None

    def add_event(self, event: Any) -> None:
        if self.failure is not None:
            raise self.failure
        self._call(self.writer.add_event, event)

    def flush(self) -> None:
        if self.failure is None:
            self._call(self.writer.flush)

    def close(self) -> None:
        if self.failure is None:
            self._call(self.writer.close)

    def __getattr__(self, name: str) -> Any:  # get_logdir, reopen, ...
        return getattr(self.writer, name)

    def _call(self, method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except OSError as err:
            where = (
                os.fsdecode(err.filename)
                if err.filename
                else f"the TensorBoard event file in {self.writer.get_logdir()}"
            )
            self.failure = CannotWrite(where, err)
            _wait_for_failed_writer_threads(err)
            raise self.failure from None


def _wait_for_failed_writer_threads(err: OSError) -> None:
    # The writer thread that failed has stored its error (TensorBoard re-raises it here) and is
    # ending; joined, it has passed errors.quiet_writer_threads before the command reports the error.
    for thread in threading.enumerate():
        if getattr(thread, "exception", None) is err:
            thread.join(timeout=10)
