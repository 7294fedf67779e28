"""``train/loss`` at every optimizer step and its epoch mean, from what ``training_step`` returns."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import pytorch_lightning as pl
import torch

from lightsum.errors import diverged


class TrainLoss(pl.Callback):
    """Logs ``train/loss`` at every optimizer step (every ``trainer.log_every_n_steps``-th) and
    ``train/loss_epoch``, the mean step loss of the epoch averaged over ranks.

    Cheap per step: reading a loss back every step would make a GPU wait for it, and ``self.log``
    has a per-call cost of its own (docs/benchmarks.md). The losses wait on the device and go straight to the
    loggers every ``flush_every`` points, with one host read per flush. With gradient
    accumulation a step's loss is the mean over its batches. A non-finite epoch mean stops
    training with "training diverged" instead of training on.

    Args:
        flush_every: points kept on the device between writes.
    """

    def __init__(self, flush_every: int = 50) -> None:
        self.flush_every = flush_every
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet written
        self._since_step: torch.Tensor | None = None  # sum of the batches' losses since the last optimizer step
        self._batches = 0  # and their number
        self._epoch_sum: torch.Tensor | None = None
        self._epoch_steps = 0
        self._last_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step  # restored on resume

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_sum, self._epoch_steps = None, 0

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._flush(trainer)  # a checkpoint's curve is complete up to it, even if the process dies next

    def state_dict(self) -> dict[str, Any]:
        # A checkpoint taken mid-epoch carries the epoch's sum so far: a resumed epoch's mean is exact.
        return {"epoch_sum": self._epoch_sum, "epoch_steps": self._epoch_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._epoch_sum, self._epoch_steps = state_dict["epoch_sum"], state_dict["epoch_steps"]

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Lightning hands over the loss detached and divided by accumulate_grad_batches.
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if loss is None:
            return  # training_step skipped this batch
        self._since_step = loss if self._since_step is None else self._since_step + loss
        self._batches += 1
        if trainer.global_step == self._last_step:
            return  # accumulating: the optimizer has not stepped yet
        self._last_step = trainer.global_step
        step_loss, batches, self._since_step, self._batches = self._since_step, self._batches, None, 0
        if batches != trainer.accumulate_grad_batches:  # an epoch's short last window
            step_loss = step_loss * (trainer.accumulate_grad_batches / batches)
        self._epoch_sum = step_loss if self._epoch_sum is None else self._epoch_sum + step_loss
        self._epoch_steps += 1
        step = trainer.global_step - 1  # where Lightning logs the step's own values
        if trainer.loggers and trainer.is_global_zero and step % trainer.log_every_n_steps == 0:
            self._pending.append((step, step_loss))
            if len(self._pending) >= self.flush_every:
                self._flush(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)
        if not self._epoch_steps:
            return
        # Reduced first, so that every rank sees the same value and stops together.
        mean = trainer.strategy.reduce(self._epoch_sum / self._epoch_steps, reduce_op="mean")
        if not torch.isfinite(mean):  # one host read per epoch
            raise diverged(f"the training loss of epoch {trainer.current_epoch}", trainer.precision)
        pl_module.log("train/loss_epoch", mean, sync_dist=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)  # a max_steps stop can end training mid-epoch

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # The curve reaches the step that failed or was interrupted, where the logger can still write.
        # Where it cannot (the error being handled may be that one), raising here would replace that
        # error and skip the other callbacks' clean-up; Lightning's logger wraps an OS error in ValueError.
        with suppress(OSError, ValueError):
            self._flush(trainer)

    def _flush(self, trainer: pl.Trainer) -> None:
        if not self._pending:
            return
        steps = [step for step, _ in self._pending]
        values = torch.stack([loss for _, loss in self._pending]).tolist()
        self._pending.clear()
        for logger in trainer.loggers:
            for step, value in zip(steps, values):
                logger.log_metrics({"train/loss": value}, step=step)
