"""A callback that holds a fit at one training batch until lightsum has a stop request, so that a test
can signal a job known to be training with lightsum's handlers in place, from outside the process
(``scancel``, SLURM's time limit), and the run then stops right after that batch."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytorch_lightning as pl

from lightsum.callbacks import Preemption


class HoldUntilStop(pl.Callback):
    """At the end of batch ``batch`` (1-based) of epoch ``epoch``: writes the file ``marker``, then
    sleeps until lightsum's Preemption callback has recorded a signal (its handler runs during the
    sleeps), or fails after ``timeout`` seconds. Placed before Preemption, which then stops there.
    ``marker`` may name environment variables (``held_{SLURM_ARRAY_TASK_ID}``), one file a process."""

    def __init__(self, batch: int, epoch: int, marker: str, timeout: float = 120) -> None:
        self.batch, self.epoch, self.marker, self.timeout = batch, epoch, marker, timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx + 1) != (self.epoch, self.batch):
            return
        (preemption,) = [c for c in trainer.callbacks if isinstance(c, Preemption)]
        Path(self.marker.format(**os.environ)).touch()
        deadline = time.monotonic() + self.timeout
        while preemption.signum is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"HoldUntilStop: no stop request within {self.timeout} s")
            time.sleep(0.05)  # idle: the machine's cores stay free for the other jobs
