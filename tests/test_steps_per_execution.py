"""steps_per_execution > 1: several optimizer steps per Lightning batch, same training as 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import ReduceLROnPlateau
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightsum import SumClassifier, SumDataModule
from lightsum.checkpointing import RandomStates

SCHEDULERS = {
    "epoch": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3),
    "step": lambda opt: {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 7, 0.5), "interval": "step"},
    # mode="max" on a falling loss: the plateau scheduler halves the rate after every epoch.
    "plateau": lambda opt: {"scheduler": ReduceLROnPlateau(opt, monitor="val/loss", mode="max", patience=0, factor=0.5),
                            "monitor": "val/loss"},
}


class Scheduled(SumClassifier):
    def __init__(self, scheduler: str = "epoch", **kwargs) -> None:
        super().__init__(**kwargs)
        self.scheduler = scheduler

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=3e-3)
        return {"optimizer": opt, "lr_scheduler": SCHEDULERS[self.scheduler](opt)}


def fit(root: Path, steps: int, scheduler: str = "epoch", ckpt_path: str | None = None, **trainer) -> tuple[Scheduled, pl.Trainer]:
    pl.seed_everything(0)
    model = Scheduled(scheduler, hidden_size=8, layout="flat", steps_per_execution=steps)
    data = SumDataModule(num_samples=3000, batch_size=64, layout="flat", sampling="oversample", steps_per_execution=steps)
    options = {"max_epochs": 3, "enable_progress_bar": False, "log_every_n_steps": 1, **trainer}
    t = pl.Trainer(logger=TensorBoardLogger(root, name="run", version=0), callbacks=[RandomStates(),
                   ModelCheckpoint(dirpath=root / "ckpt", save_last=True)], **options)
    t.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model, t


def scalars(root: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(root / "run" / "version_0"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_grouped_steps_train_and_log_exactly_as_single_steps(tmp_path: Path, scheduler: str) -> None:
    one, t1 = fit(tmp_path / "one", 1, scheduler)
    four, t4 = fit(tmp_path / "four", 4, scheduler)
    assert not four.automatic_optimization and t4.num_training_batches == 19  # 75 batches in groups of 4
    assert t1.global_step == t4.global_step == 3 * 75
    assert t1.optimizers[0].param_groups[0]["lr"] == t4.optimizers[0].param_groups[0]["lr"]
    if scheduler == "plateau":
        assert t4.optimizers[0].param_groups[0]["lr"] == pytest.approx(3e-3 / 4)  # halved after epochs 1 and 2
    for name, value in one.state_dict().items():
        assert torch.equal(value, four.state_dict()[name]), name
    # Every TensorBoard point (train/loss per step, epoch and validation metrics) at the same step.
    assert scalars(tmp_path / "one") == scalars(tmp_path / "four")


def test_max_steps_stops_inside_a_group(tmp_path: Path) -> None:
    _, trainer = fit(tmp_path, 4, max_steps=10, max_epochs=-1)
    assert trainer.global_step == 10
    assert [step for step, _ in scalars(tmp_path)["train/loss"]] == list(range(10))


def test_resume_with_grouped_steps_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    whole, _ = fit(tmp_path / "whole", 4)
    fit(tmp_path / "parts", 4, max_epochs=2)
    resumed, _ = fit(tmp_path / "parts", 4, ckpt_path=str(tmp_path / "parts" / "ckpt" / "last.ckpt"))
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_trainer_gradient_clipping_is_refused_with_grouped_steps(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="gradient clipping is not supported for manual optimization"):
        fit(tmp_path, 4, gradient_clip_val=1.0)
