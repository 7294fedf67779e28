"""Stopping on SIGTERM, SIGINT, SIGHUP and SLURM's warning signal: every subcommand stops at the next
batch, keeps only what its kind of run can keep, and exits with 128 + the signal's number."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.environments import SLURMEnvironment

from lightsum.errors import note

# SIGHUP (the terminal or ssh session went away) is a stop request like SIGTERM. SIGQUIT keeps its
# default: it asks for a core dump, which a handler would prevent.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# What an evaluation keeps when stopped before its results are logged or written, and after.
_KEPT = {
    "validate": ("no metrics logged", "its metrics are logged"),
    "test": ("no metrics logged", "its metrics are logged"),
    "predict": ("no predictions written", "its predictions are written"),
}


class Stopped(SystemExit):
    """A run stopped by a signal; its exit code is 128 + the signal's number, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class Preemption(pl.Callback):
    """Stops ``fit``, ``validate``, ``test`` and ``predict`` cleanly on SIGTERM, SIGINT (Ctrl-C),
    SIGHUP and, under SLURM, SIGUSR1; the process exits with 128 + the signal (143, 130, 129), so
    ``fit && test`` does not carry on.

    The handler only records the signal; the run stops at the next batch boundary (under DDP every
    rank at the same one: the flag is OR-reduced across ranks there, where Lightning would broadcast
    from inside its signal handler and can deadlock against a collective already running). One line
    on stderr says where it stopped and what was kept:

    - ``fit``, training: at the end of the next optimizer step (with ``accumulate_grad_batches`` > 1,
      the end of the accumulation window, so no accumulated gradient is lost), ``last.ckpt`` is
      written into the run's checkpoint folder (atomically, with every rank's random states and the
      loader's position): ``--ckpt_path last`` continues at the next batch, bitwise as if never
      stopped.
    - ``fit``, the epoch's last batch, its validation and its end: the epoch finishes and its
      checkpoints are written as usual, then the run stops before the next epoch's first batch (or
      after the last epoch). A checkpoint saved inside that stretch would not resume exactly: on
      resume Lightning skips the rest of the epoch's validation and end.
    - ``fit``, the sanity check or before the first batch: nothing trained, nothing saved.
    - ``validate``, ``test``, ``predict``: nothing half-written (no metrics logged, no predictions
      file).

    A stop requested after the last check of a run (as it finishes) still sets the exit code. Under
    SLURM, SIGUSR1 also requeues the job. A second signal changes nothing: the stop is decided.
    Handlers are in place from the run's first loop (the sanity check, training or evaluation) to
    its end, then the process's own are given back.
    """

    def __init__(self) -> None:
        self.signum: int | None = None  # the first stop signal of the running trainer run
        self._previous: dict[int, Any] = {}  # the handlers replaced, while ours are installed
        self._step = 0  # global step at the last training batch's end: a change means the optimizer stepped
        self._ending_epoch = False  # between a training epoch's end hooks and the next epoch's start
        self._epoch_saved = False  # and a checkpoint was written in that stretch
        self._batches = 0  # batches of the running evaluation loop
        self._total: float = 0  # and how many it has on this rank
        self._common: float = math.inf  # how many of them every rank has (a collective needs all ranks)

    # -- the handlers' lifetime -----------------------------------------------------------------------
    # Lightning registers its own SIGTERM handler after the setup and on_fit_start hooks, right before
    # the sanity check, training or evaluation starts, and its teardown puts back the handlers it found.
    # So ours go in at the first loop hook (replacing Lightning's, which would raise SIGTERMException, a
    # SystemExit with no code), and are given back before Lightning's teardown or by it.

    def _install(self, trainer: pl.Trainer) -> None:
        if self._previous or threading.current_thread() is not threading.main_thread():
            return  # installed for this run already; or signals cannot be handled in this thread
        # A SIGTERM that came before this hook went to Lightning's handler, which only notes it.
        self.signum = signal.SIGTERM if trainer.received_sigterm else None
        for signum in STOP_SIGNALS + ((signal.SIGUSR1,) if SLURMEnvironment.detect() else ()):
            self._previous[signum] = signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum

    def _restore(self) -> None:
        """Give back the replaced handlers where ours is still installed (Lightning's teardown may
        have put back its own already; restoring over it would leave Lightning's in place)."""
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) in (self._record, signal.SIG_IGN):  # ours, or ignored by _stop
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()  # Lightning's teardown, next, puts back what it found before ours

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()  # Lightning's teardown, just before, has put back what it found
        if self.signum is not None:  # came after the last check below: the run is complete
            fn = trainer.state.fn.value
            self._stop(
                trainer, f"as {fn} finished: {'training is complete' if fn == 'fit' else _KEPT[fn][1]}", complete=True
            )

    # -- fit ----------------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)
        self._step = trainer.global_step  # restored on resume
        if self._decided(trainer):
            self._stop(trainer, "before training started: nothing trained, nothing saved")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stepped, self._step = trainer.global_step != self._step, trainer.global_step
        # Inside an accumulation window the gradient so far is in no checkpoint; after the epoch's
        # last batch the epoch's own end saves it (see on_train_epoch_start). Every rank agrees on
        # both, so the collective below is skipped by all or none.
        if not stepped or batch_idx + 1 >= trainer.num_training_batches:
            return
        if not self._decided(trainer):
            return
        path = self._last_ckpt(trainer)
        # Every rank takes part; rank 0 writes, through AtomicCheckpointIO. A whole checkpoint (optimizer,
        # loops, callbacks) to resume from: said outright, or Lightning logs that it "defaults" to it.
        trainer.save_checkpoint(path, weights_only=False)
        for logger in trainer.loggers:
            logger.save()  # to disk before a requeue ends the job
        self._stop(
            trainer,
            f"after batch {batch_idx + 1} of epoch {trainer.current_epoch}; saved {path}: "
            "the same command with --ckpt_path last continues from there",
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The checkpoint callbacks' epoch-end hooks come after this one (Lightning calls them last).
        self._ending_epoch, self._epoch_saved = True, False

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._epoch_saved = self._epoch_saved or self._ending_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        saved, self._ending_epoch, self._epoch_saved = self._epoch_saved, False, False
        # Without a checkpoint of the epoch's end (a ModelCheckpoint that saves on validation end or
        # every n epochs), the run stops at the next optimizer step instead, saving there.
        if saved and self._decided(trainer):
            self._stop(
                trainer,
                f"after epoch {trainer.current_epoch - 1} and its validation; saved "
                f"{self._newest_ckpt(trainer)}: the same command with --ckpt_path last continues from there",
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._decided(trainer):
            where = f", its checkpoints are in {self._last_ckpt(trainer).parent}" if trainer.checkpoint_callback else ""
            self._stop(trainer, f"after the last epoch and its validation: training is complete{where}", complete=True)

    # -- the sanity check and evaluations ------------------------------------------------------------

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # fit's validation stops at the epoch's end
            self._start_evaluation(
                trainer, trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
            )

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_evaluation(trainer, trainer.num_test_batches)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_evaluation(trainer, trainer.num_predict_batches)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            self._evaluation_batch_end(trainer)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._evaluation_batch_end(trainer)

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._evaluation_batch_end(trainer)

    # The epoch-end hooks come before metrics are logged (the module's own epoch-end hook, after the
    # callbacks', computes them) and before the predictions file is committed (on_predict_end).
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.sanity_checking or trainer.state.fn != "fit") and self._decided(trainer):
            self._stop_evaluation(trainer)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._decided(trainer):
            self._stop_evaluation(trainer)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._decided(trainer):
            self._stop_evaluation(trainer)

    def _start_evaluation(self, trainer: pl.Trainer, batches: list[int | float]) -> None:
        self._install(trainer)
        self._batches, self._total, self._common = 0, sum(batches), math.inf
        if trainer.world_size > 1:
            # Ranks' evaluation shares can differ by a batch: reduce only over the batches all have.
            total = torch.tensor(float(self._total), device=trainer.strategy.root_device)
            self._common = trainer.strategy.reduce(total, reduce_op="min").item()

    def _evaluation_batch_end(self, trainer: pl.Trainer) -> None:
        self._batches += 1
        if self._batches > self._common:
            return  # a batch some rank lacks: the loop's end decides
        if self._decided(trainer):
            self._stop_evaluation(trainer)

    def _stop_evaluation(self, trainer: pl.Trainer) -> None:
        done = f"after {self._batches} of {self._total:.0f} batches"
        if trainer.sanity_checking:
            self._stop(trainer, f"during fit's sanity check, {done}: nothing trained, nothing saved")
        else:
            stage = trainer.state.fn.value
            self._stop(trainer, f"during {stage}, {done}: {_KEPT[stage][0]}")

    # -- deciding and stopping ------------------------------------------------------------------------

    def _decided(self, trainer: pl.Trainer) -> bool:
        """Whether any rank has a stop request (a collective under DDP: every rank must call it)."""
        stop = self.signum is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        return stop

    def _stop(self, trainer: pl.Trainer, where: str, complete: bool = False) -> None:
        """Say where the run stopped, requeue a SLURM job that has work left (SIGUSR1), and raise
        ``Stopped``. Further stop signals are ignored from here until the handlers are given back:
        the stop is decided, and the clean-up (aborting a partial file) must not be interrupted."""
        signum = self.signum or signal.SIGTERM  # another rank's signal
        self.signum = None  # acted on
        for installed in self._previous:
            signal.signal(installed, signal.SIG_IGN)
        note(f"stopped by {signal.Signals(signum).name} {where}")
        if signum == signal.SIGUSR1 and trainer.is_global_zero and not complete:
            requeue()  # a finished run requeued would only be refused: nothing left to train
        raise Stopped(signum)

    @staticmethod
    def _last_ckpt(trainer: pl.Trainer) -> Path:
        callback = trainer.checkpoint_callback
        return (
            Path(callback.dirpath if callback is not None and callback.dirpath else trainer.default_root_dir)
            / "last.ckpt"
        )

    def _newest_ckpt(self, trainer: pl.Trainer) -> Path:
        """The checkpoint written last in the checkpoint folder: the one ``--ckpt_path last`` resumes."""
        folder = self._last_ckpt(trainer).parent
        return max(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns, default=folder / "last.ckpt")


def requeue() -> None:
    """``scontrol requeue`` this SLURM job, as Lightning's own SIGUSR1 handler does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job_id):
        raise ValueError(f"not a SLURM job id: {job_id!r}")
    result = subprocess.call(["scontrol", "requeue", job_id])
    note(f"requeued SLURM job {job_id}" if result == 0 else f"scontrol requeue {job_id} failed (exit {result})")


@contextmanager
def stop_at_once() -> Iterator[None]:
    """While inside: SIGTERM, SIGINT and SIGHUP stop the command at once, with one line on stderr and
    exit code 128 + the signal. For the moments outside a trainer's loops (start-up, the data's
    generation, the fit summary), where nothing is half-trained; ``Preemption`` takes over inside them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        note(f"stopped by {signal.Signals(signum).name} outside the training and evaluation loops")
        raise Stopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
