"""callbacks.TrainLoss: train/loss at every optimizer step, its epoch mean, and divergence."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import scalars
from pytorch_lightning.loggers import TensorBoardLogger

from lightsum import SumClassifier, SumDataModule
from lightsum.callbacks import TrainLoss


class Recorded(SumClassifier):
    """Fixed weights (lr 0), so every step's loss is reproducible; records what training_step returns."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def on_train_start(self):
        self.step_losses = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.step_losses.append(float(loss.detach()))
        return loss


def fit(tmp_path, flush_every: int = 50, **trainer) -> tuple[Recorded, pl.Trainer]:
    torch.manual_seed(0)
    model = Recorded(hidden_size=8, dropout=0.0)
    options = {
        "max_epochs": 2,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "limit_val_batches": 0,
        "log_every_n_steps": 1,
        **trainer,
    }
    t = pl.Trainer(
        logger=TensorBoardLogger(tmp_path, name="run", version=0), callbacks=[TrainLoss(flush_every)], **options
    )
    t.fit(model, datamodule=SumDataModule(num_samples=1000, batch_size=64))
    return model, t


def test_every_step_is_logged_once_with_its_loss(tmp_path) -> None:
    model, trainer = fit(tmp_path, flush_every=5)  # 13 steps an epoch: flushes at 5, 10 and the epoch end
    points = scalars(tmp_path / "run" / "version_0")["train/loss"]
    assert [s for s, _ in points] == list(range(26)) == list(range(trainer.global_step))
    np.testing.assert_allclose([v for _, v in points], model.step_losses, rtol=1e-6)
    epoch_means = [v for _, v in scalars(tmp_path / "run" / "version_0")["train/loss_epoch"]]
    np.testing.assert_allclose(
        epoch_means, [np.mean(model.step_losses[:13]), np.mean(model.step_losses[13:])], rtol=1e-5
    )


def test_log_every_n_steps_and_max_steps_mid_epoch(tmp_path) -> None:
    _, trainer = fit(tmp_path, log_every_n_steps=4, max_steps=18, max_epochs=-1)
    assert trainer.global_step == 18
    assert [s for s, _ in scalars(tmp_path / "run" / "version_0")["train/loss"]] == [0, 4, 8, 12, 16]


def test_with_gradient_accumulation_a_point_is_the_mean_of_its_batches(tmp_path) -> None:
    model, trainer = fit(tmp_path, accumulate_grad_batches=3, max_epochs=1)  # 13 batches: steps of 3, 3, 3, 3, 1
    points = scalars(tmp_path / "run" / "version_0")["train/loss"]
    assert [s for s, _ in points] == list(range(trainer.global_step)) == list(range(5))
    losses = model.step_losses
    # Lightning divides each batch's loss by accumulate_grad_batches, also in the epoch's short last window.
    expected = [np.mean(losses[i : i + 3]) for i in range(0, 12, 3)] + [losses[12]]
    np.testing.assert_allclose([v for _, v in points], expected, rtol=1e-5)


def test_a_non_finite_training_loss_stops_with_a_clear_error(tmp_path) -> None:
    class Diverging(SumClassifier):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=float("inf"))

    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        limit_train_batches=3,
        callbacks=[TrainLoss()],
    )
    with pytest.raises(
        ValueError, match="training diverged: the training loss of epoch 0 is not finite .*lower --optimizer"
    ):
        trainer.fit(Diverging(hidden_size=8), datamodule=SumDataModule(num_samples=2000, batch_size=64))
