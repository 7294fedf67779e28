"""Stopped by a signal mid-epoch, resumed from the checkpoint it saved: the end is bitwise the uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO, tiny
from pytorch_lightning.callbacks import ModelCheckpoint
from test_stop_requests import pause, signal_when_paused

from lightsum import SumClassifier, SumDataModule
from lightsum.callbacks import Preemption, RandomStates, TrainLoss
from lightsum.checkpoints import read_checkpoint

EPOCHS = 3


class AdamClassifier(SumClassifier):
    def configure_optimizers(self):  # what the CLI would inject
        opt = torch.optim.Adam(self.parameters(), lr=3e-3)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)}


class SignalAt(pl.Callback):
    """Sends this process a signal once training reaches ``step``, as a scheduler or Ctrl-C would."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def fit(
    root: Path, ckpt_path: str | None = None, stop: SignalAt | None = None, **data
) -> tuple[pl.Trainer, SumClassifier]:
    pl.seed_everything(0)
    model = AdamClassifier(hidden_size=8, layout="flat")
    datamodule = SumDataModule(**{"num_samples": 3000, "batch_size": 64, "layout": "flat", **data})
    # The signal comes after the batch's TrainLoss and before Preemption looks for it.
    callbacks = [
        RandomStates(),
        TrainLoss(),
        *([stop] if stop else []),
        Preemption(),
        ModelCheckpoint(dirpath=root / "ckpt", save_last=True),
    ]
    trainer = pl.Trainer(
        max_epochs=EPOCHS, logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer, model


def assert_same_weights(a: SumClassifier, b: SumClassifier) -> None:
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name


def stop_and_resume(tmp_path: Path, signum: int, **data) -> tuple[SumClassifier, SumClassifier, pl.Trainer]:
    _, whole = fit(tmp_path / "whole", **data)
    steps_per_epoch = len(whole.trainer.train_dataloader)
    stop = SignalAt(steps_per_epoch + steps_per_epoch // 2, signum)  # the middle of the second epoch
    with pytest.raises(SystemExit) as stopped:
        fit(tmp_path / "parts", stop=stop, **data)
    assert stopped.value.code == 128 + signum
    saved = read_checkpoint(str(tmp_path / "parts" / "ckpt" / "last.ckpt"))
    assert saved["global_step"] == stop.step and saved["epoch"] == 1  # mid-epoch, right after that batch
    trainer, resumed = fit(tmp_path / "parts", ckpt_path=str(tmp_path / "parts" / "ckpt" / "last.ckpt"), **data)
    return whole, resumed, trainer


def test_sigterm_mid_epoch_saves_and_the_resumed_run_ends_bitwise_equal(tmp_path: Path) -> None:
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    whole, resumed, trainer = stop_and_resume(tmp_path, signal.SIGTERM, sampling="oversample")
    assert trainer.global_step == whole.trainer.global_step
    assert_same_weights(whole, resumed)
    # The epoch's training figures continue too: counts and loss sums are in the checkpoint.
    for name in ("train/recall_0", "train/recall_1", "train/loss_epoch"):
        assert torch.equal(trainer.callback_metrics[name], whole.trainer.callback_metrics[name]), name
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the process's handlers given back


@pytest.mark.slow
def test_a_stop_at_the_epochs_last_batch_waits_for_the_epochs_end(tmp_path: Path, capsys) -> None:
    # A checkpoint saved after the epoch's last batch would resume without the rest of that epoch's
    # validation and end (Lightning restarts it as a finished epoch): the stop waits for the epoch's
    # own checkpoint instead.
    _, whole = fit(tmp_path / "whole")
    steps_per_epoch = len(whole.trainer.train_dataloader)
    with pytest.raises(SystemExit) as stopped:
        fit(tmp_path / "parts", stop=SignalAt(2 * steps_per_epoch, signal.SIGTERM))  # epoch 1's last batch
    assert stopped.value.code == 143
    last = tmp_path / "parts" / "ckpt" / "last.ckpt"
    assert f"lightsum: stopped by SIGTERM after epoch 1 and its validation; saved {last}" in capsys.readouterr().err
    trainer, resumed = fit(tmp_path / "parts", ckpt_path=str(last))
    assert_same_weights(whole, resumed)
    for name in ("train/loss_epoch", "val/min_recall", "val/loss"):
        assert torch.equal(trainer.callback_metrics[name], whole.trainer.callback_metrics[name]), name


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sampling", "distribution"),
    [
        ("none", "natural"),
        ("undersample", "natural"),
        ("weighted", "natural"),
        ("none", "balanced"),
        ("oversample", "balanced"),
        ("oversample", "boundary"),
    ],
)
def test_every_strategy_resumes_exactly_mid_epoch(sampling: str, distribution: str, tmp_path: Path) -> None:
    size = {"num_samples": 20_000, "batch_size": 16} if sampling == "undersample" else {}  # epochs of several batches
    whole, resumed, _ = stop_and_resume(
        tmp_path, signal.SIGINT, sampling=sampling, train_distribution=distribution, **size
    )
    assert_same_weights(whole, resumed)


def launch(root: Path, *extra: str, pause: dict | None = None) -> subprocess.Popen:
    # Epochs of ~190 steps: long enough for a signal to land mid-epoch.
    args = [
        *tiny(root, epochs=EPOCHS),
        "--data.num_samples=12000",
        "--data.batch_size=64",
        "--figures.every_n_epochs=0",
    ]
    if pause:  # a PauseAt callback (tests/test_stop_requests.py) holds the process at a known batch
        args.append(
            "--trainer.callbacks=" + json.dumps([{"class_path": "test_stop_requests.PauseAt", "init_args": pause}])
        )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
        "LIGHTSUM_ALLOW_IMPORTS": "test_stop_requests",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "lightsum", "fit", *args, *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def ddp(processes: int) -> list[str]:
    return ["--config", str(REPO / "configs" / "ddp.yaml"), "--trainer.accelerator=cpu"] if processes == 2 else []


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory):
    """The final weights of a run never stopped, per number of processes (each run once)."""
    runs: dict[int, dict[str, torch.Tensor]] = {}

    def weights(processes: int) -> dict[str, torch.Tensor]:
        if processes not in runs:
            root = tmp_path_factory.mktemp("whole")
            proc = launch(root, *ddp(processes))
            assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
            runs[processes] = final_weights(root / "default" / "version_0")
        return runs[processes]

    return weights


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("processes", "signum", "code"), [(1, signal.SIGTERM, 143), (1, signal.SIGINT, 130), (2, signal.SIGTERM, 143)]
)
def test_a_signalled_fit_exits_non_zero_and_resumes_exactly(
    processes: int, signum: int, code: int, run_root: Path, uninterrupted
) -> None:
    run_dir = run_root / "default" / "version_0"
    proc = launch(run_root, *ddp(processes), pause=pause(run_root.parent, "train", 20, epoch=1))  # every rank pauses
    stderr = signal_when_paused(proc, run_root.parent, signum)  # rank 0 is signalled; the others follow it
    assert proc.returncode == code, stderr[-3000:]
    line = next(line for line in stderr.splitlines() if line.startswith("lightsum: stopped by"))
    assert line.startswith(f"lightsum: stopped by {signal.Signals(signum).name} after batch ")
    assert line.endswith(
        f"saved {run_dir / 'checkpoints' / 'last.ckpt'}: the same command with --ckpt_path last continues from there"
    )
    saved = read_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"))
    assert len(saved["callbacks"]["RandomStates"]["per_rank"]) == processes
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["trained_batches"] == 20  # mid-epoch
    resumed = launch(run_root, *ddp(processes), "--ckpt_path=last")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    expected = uninterrupted(processes)
    for name, value in final_weights(run_dir).items():
        assert torch.equal(value, expected[name]), name
