"""Stopping on SIGTERM, SIGINT and SLURM's warning signal: a resumable checkpoint at the next batch boundary."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.plugins.environments import SLURMEnvironment

from lightsum.errors import note


class Stopped(SystemExit):
    """``fit`` stopped by a signal; its exit code is 128 + the signal's number, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class Preemption(pl.Callback):
    """Stops ``fit`` cleanly on SIGTERM, SIGINT (Ctrl-C) and, under SLURM, SIGUSR1.

    The signal handler only records the signal; the stop happens at the end of the batch being
    trained (under DDP every rank stops after the same batch: the flag is OR-reduced across ranks
    each batch, where Lightning would broadcast from inside its signal handler and can deadlock
    against a collective already running). Then ``last.ckpt`` is written into the run's checkpoint
    folder (atomically, with every rank's random states and the loader's position, so
    ``--ckpt_path last`` continues at the next batch, bitwise as if never stopped), a line says
    where, a SLURM job is requeued on SIGUSR1, and ``fit`` raises ``Stopped``: the process exits
    with 128 + the signal (143 for SIGTERM, 130 for SIGINT), so ``fit && test`` does not carry on.
    A second signal during the save changes nothing: the stop is decided and the write atomic.
    """

    def __init__(self) -> None:
        self.signum: int | None = None  # the first stop signal this process received
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def record(signum: int, frame: FrameType | None) -> None:
            self.signum = self.signum or signum

        self.signum = None
        for signum in [signal.SIGTERM, signal.SIGINT] + ([signal.SIGUSR1] if SLURMEnvironment.detect() else []):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, record)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stop = self.signum is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        signum = self.signum or signal.SIGTERM  # another rank's signal
        path = Path(trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else trainer.default_root_dir)
        path = path / "last.ckpt"
        trainer.save_checkpoint(path)  # every rank takes part; rank 0 writes, through AtomicCheckpointIO
        for logger in trainer.loggers:
            logger.save()  # to disk before a requeue ends the job
        note(f"stopped by {signal.Signals(signum).name} after batch {batch_idx + 1} of epoch {trainer.current_epoch}; "
             f"saved {path}: the same command with --ckpt_path last continues from there")
        if signum == signal.SIGUSR1 and trainer.is_global_zero:
            requeue()
        raise Stopped(signum)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


def requeue() -> None:
    """``scontrol requeue`` this SLURM job, as Lightning's own SIGUSR1 handler does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job_id):
        raise ValueError(f"not a SLURM job id: {job_id!r}")
    result = subprocess.call(["scontrol", "requeue", job_id])
    note(f"requeued SLURM job {job_id}" if result == 0 else f"scontrol requeue {job_id} failed (exit {result})")
