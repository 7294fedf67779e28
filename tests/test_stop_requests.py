"""Every stop request honoured: SIGTERM, SIGINT and SIGHUP stop fit (its sanity check and validation
included), validate, test and predict at the next batch, keep nothing half-written, say so in one
line and exit with 128 + the signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO, scalars, tiny
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from lightsum import SumClassifier, SumDataModule
from lightsum.callbacks import PredictionCSV, Preemption
from lightsum.callbacks.preemption import STOP_SIGNALS, Stopped, stop_at_once
from lightsum.checkpoints import read_checkpoint

LOOPS = ("train", "sanity", "validation", "test", "predict")


class PauseAt(pl.Callback):
    """At the end of batch ``batch`` (1-based, of the epoch) of ``loop`` in epoch ``epoch``: sends this
    process ``signum`` when given; else writes the file ``marker`` and waits for the file ``release``,
    so that a test can signal a process known to be inside that loop. ``loop`` is one of ``LOOPS``
    ("sanity": fit's sanity check, "validation": fit's or validate's own)."""

    def __init__(
        self, loop: str, batch: int, epoch: int = 0, signum: int | None = None, marker: str = "", release: str = ""
    ) -> None:
        assert loop in LOOPS
        self.loop, self.batch, self.epoch, self.signum = loop, batch, epoch, signum
        self.marker, self.release = marker, release

    def _reached(self, trainer: pl.Trainer, loop: str, batch_idx: int) -> None:
        if loop == "validation" and trainer.sanity_checking:
            loop = "sanity"
        if (loop, batch_idx + 1, trainer.current_epoch) != (self.loop, self.batch, self.epoch):
            return
        if self.signum is not None:
            os.kill(os.getpid(), self.signum)
            return
        Path(self.marker).touch()
        deadline = time.monotonic() + 120
        while not Path(self.release).exists():  # the handler runs during this loop's sleeps
            assert time.monotonic() < deadline, "never released"
            time.sleep(0.01)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._reached(trainer, "train", batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._reached(trainer, "validation", batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._reached(trainer, "test", batch_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._reached(trainer, "predict", batch_idx)


def stop_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("lightsum: stopped by")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def tags(run_dir: Path, stage: str) -> list[str]:
    return [tag for tag in scalars(run_dir) if tag.startswith(f"{stage}/")] if run_dir.exists() else []


# -- in process (fast) ------------------------------------------------------------------------------

SMALL = {
    "num_samples": 1200,
    "val_fraction": 0.2,
    "batch_size": 64,
    "test_samples": 384,
    "eval_batch_size": 64,
    "layout": "flat",
    "calibration_per_sum": 0,
    "boundary_per_sum": 0,
}
BATCHES = {"test": 6, "predict": 6, "validate": 4}  # 384 test sequences, 240 validation sequences


class SignalIn(pl.Callback):
    """Sends this process ``signum`` in its hook ``hook`` (a callback before Preemption)."""

    def __init__(self, hook: str, signum: int) -> None:
        self.signum = signum
        setattr(self, hook, lambda *args: os.kill(os.getpid(), signum))


def evaluate(stage: str, callback: pl.Callback, root: Path) -> Path:
    """``stage`` (validate, test or predict) of an untrained model, logging into ``root``/run/version_0."""
    model = SumClassifier(hidden_size=4, layout="flat")
    out = root / "predictions.csv"
    callbacks = [callback, Preemption(), *([PredictionCSV(str(out))] if stage == "predict" else [])]
    trainer = pl.Trainer(
        logger=TensorBoardLogger(root, name="run", version=0),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    getattr(trainer, stage)(model, datamodule=SumDataModule(**SMALL))
    return root / "run" / "version_0"


@pytest.mark.parametrize(
    ("stage", "signum", "kept"),
    [
        ("test", signal.SIGTERM, "no metrics logged"),
        ("validate", signal.SIGHUP, "no metrics logged"),
        ("predict", signal.SIGINT, "no predictions written"),
    ],
)
def test_an_evaluation_stops_at_the_next_batch_and_keeps_nothing_half_written(stage, signum, kept, tmp_path, capsys):
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    loop = "validation" if stage == "validate" else stage
    with pytest.raises(Stopped) as stopped:
        evaluate(stage, PauseAt(loop, 2, signum=signum), tmp_path)
    assert stopped.value.code == 128 + signum
    assert stop_line(capsys.readouterr().err) == (
        f"lightsum: stopped by {signal.Signals(signum).name} during {stage}, after 2 of {BATCHES[stage]} batches: {kept}"
    )
    assert not (tmp_path / "predictions.csv").exists() and not list(tmp_path.glob(".predictions.csv.*"))
    assert tags(tmp_path / "run" / "version_0", "test" if stage == "test" else "val") == []
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the process's own handlers given back


@pytest.mark.parametrize(
    ("hook", "line", "logged"),
    [
        (None, None, True),  # not stopped: the checks below see the metrics a stop prevents
        ("on_test_epoch_end", "during test, after 6 of 6 batches: no metrics logged", False),
        ("on_test_end", "as test finished: its metrics are logged", True),  # after the last check: the exit code still
    ],
)
def test_a_stop_request_after_the_last_batch(hook, line, logged, tmp_path, capsys) -> None:
    def run() -> None:
        evaluate("test", SignalIn(hook, signal.SIGTERM) if hook else pl.Callback(), tmp_path)

    if hook is None:
        run()
    else:
        with pytest.raises(Stopped, match="143"):
            run()
        assert stop_line(capsys.readouterr().err) == f"lightsum: stopped by SIGTERM {line}"
    assert ("test/min_recall" in tags(tmp_path / "run" / "version_0", "test")) == logged


class AdamClassifier(SumClassifier):
    def configure_optimizers(self):  # what the CLI would inject
        return torch.optim.Adam(self.parameters())


def fit(root: Path, callback: pl.Callback, epochs: int = 1) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback, Preemption(), ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
    )
    trainer.fit(AdamClassifier(hidden_size=4, layout="flat"), datamodule=SumDataModule(**SMALL))
    return trainer


@pytest.mark.parametrize(
    ("callback", "line"),
    [
        (PauseAt("sanity", 1, signum=signal.SIGHUP), "SIGHUP during fit's sanity check, after 1 of 2 batches"),
        (SignalIn("on_sanity_check_end", signal.SIGTERM), "SIGTERM before training started"),
    ],
)
def test_a_stop_before_the_first_training_batch_trains_and_saves_nothing(callback, line, tmp_path, capsys) -> None:
    with pytest.raises(Stopped) as stopped:
        fit(tmp_path, callback)
    assert stopped.value.code == 128 + callback.signum
    assert stop_line(capsys.readouterr().err) == f"lightsum: stopped by {line}: nothing trained, nothing saved"
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    ("epochs", "line"),
    [
        (
            2,
            "after epoch 0 and its validation; saved {last}: the same command with --ckpt_path last continues from there",
        ),
        (1, "after the last epoch and its validation: training is complete, its checkpoints are in {last.parent}"),
    ],
)
def test_a_stop_during_fits_validation_lets_the_epoch_end_save_then_exits(epochs, line, tmp_path, capsys) -> None:
    last = tmp_path / "ckpt" / "last.ckpt"
    with pytest.raises(Stopped) as stopped:
        fit(tmp_path, PauseAt("validation", 1, signum=signal.SIGINT), epochs=epochs)
    assert stopped.value.code == 130
    assert stop_line(capsys.readouterr().err) == "lightsum: stopped by SIGINT " + line.format(last=last)
    saved = read_checkpoint(str(last))
    assert (saved["epoch"], saved["global_step"]) == (0, 3)  # the end of epoch 0, of 3 batches


def test_outside_the_loops_a_stop_request_stops_at_once(capsys) -> None:
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    with pytest.raises(Stopped) as stopped, stop_at_once():
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(5)  # interrupted by the handler's exception
    assert stopped.value.code == 129
    assert stop_line(capsys.readouterr().err) == "lightsum: stopped by SIGHUP outside the training and evaluation loops"
    assert {s: signal.getsignal(s) for s in handlers} == handlers


# -- real processes (slow) ---------------------------------------------------------------------------

EPOCHS = 3
# Epochs of 30 batches of 16 sequences; evaluations of several batches of 64.
DATA = ["--data.batch_size=16", "--data.eval_batch_size=64", "--figures.every_n_epochs=0"]


def lightsum(command: str, root: Path, *extra: str, pause: dict | None = None) -> subprocess.Popen:
    """``python -m lightsum COMMAND`` on tiny data under ``root``, with a ``PauseAt(**pause)`` callback."""
    args = [*tiny(root, epochs=EPOCHS), *DATA, *extra]
    if pause:
        args.append(
            "--trainer.callbacks=" + json.dumps([{"class_path": "test_stop_requests.PauseAt", "init_args": pause}])
        )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
        "LIGHTSUM_ALLOW_IMPORTS": "test_stop_requests",
    }  # the test's own callback: outside lightsum's allow-list
    return subprocess.Popen(
        [sys.executable, "-m", "lightsum", command, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def signal_when_paused(proc: subprocess.Popen, tmp: Path, signum: int) -> str:
    """Wait for the process's PauseAt to write its marker, signal it, release it; its stderr."""
    marker, release = tmp / "paused", tmp / "release"
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signum)
    release.touch()
    return proc.communicate(timeout=240)[1]


def pause(tmp: Path, loop: str, batch: int, epoch: int = 0) -> dict:
    for name in ("paused", "release"):
        (tmp / name).unlink(missing_ok=True)
    return {
        "loop": loop,
        "batch": batch,
        "epoch": epoch,
        "marker": str(tmp / "paused"),
        "release": str(tmp / "release"),
    }


def finished(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fit's run folder (never stopped), for the evaluations to score."""
    root = tmp_path_factory.mktemp("trained")
    finished(lightsum("fit", root))
    return root / "default" / "version_0"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "loop", "signum", "kept"),
    [
        ("test", "test", signal.SIGTERM, "no metrics logged"),
        ("validate", "validation", signal.SIGHUP, "no metrics logged"),
        ("predict", "predict", signal.SIGINT, "no predictions written"),
    ],
)
def test_a_signalled_evaluation_exits_128_plus_the_signal_and_writes_nothing(
    command, loop, signum, kept, trained, tmp_path: Path
) -> None:
    before = {tag: len(points) for tag, points in scalars(trained).items()}
    output = tmp_path / "predictions.csv"
    ckpt = trained / "checkpoints" / "last.ckpt"
    proc = lightsum(
        command,
        trained.parent.parent,
        f"--ckpt_path={ckpt}",
        *([f"--predictions.path={output}"] if command == "predict" else []),
        pause=pause(tmp_path, loop, 2),
    )
    stderr = signal_when_paused(proc, tmp_path, signum)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert stop_line(stderr).startswith(
        f"lightsum: stopped by {signal.Signals(signum).name} during {command}, after 2 of "
    )
    assert stop_line(stderr).endswith(f" batches: {kept}")
    assert not output.exists() and not list(tmp_path.glob(".predictions.csv.*"))
    assert {tag: len(points) for tag, points in scalars(trained).items()} == before  # no metric logged


@pytest.mark.slow
def test_under_ddp_a_signalled_evaluation_stops_every_rank(trained, tmp_path: Path) -> None:
    # 513 test sequences: rank 0 has 257 (5 batches of 64), rank 1 256 (4). Rank 0 is signalled in the
    # batch rank 1 lacks: the stop waits for the loop's end, where both ranks decide it together.
    before = {tag: len(points) for tag, points in scalars(trained).items()}
    proc = lightsum(
        "test",
        trained.parent.parent,
        f"--ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
        "--config",
        str(REPO / "configs" / "ddp.yaml"),
        "--trainer.accelerator=cpu",
        "--data.test_samples=513",
        "--data.boundary_per_sum=0",  # the test set alone: no test boundary set beside it
        pause=pause(tmp_path, "test", 5),
    )
    stderr = signal_when_paused(proc, tmp_path, signal.SIGTERM)
    assert proc.returncode == 143, stderr[-3000:]
    assert stop_line(stderr) == "lightsum: stopped by SIGTERM during test, after 5 of 5 batches: no metrics logged"
    assert {tag: len(points) for tag, points in scalars(trained).items()} == before


@pytest.mark.slow
def test_a_signal_during_the_sanity_check_exits_and_saves_nothing(tmp_path: Path) -> None:
    proc = lightsum("fit", tmp_path / "logs", pause=pause(tmp_path, "sanity", 1))
    stderr = signal_when_paused(proc, tmp_path, signal.SIGTERM)
    assert proc.returncode == 143, stderr[-3000:]
    assert stop_line(stderr) == (
        "lightsum: stopped by SIGTERM during fit's sanity check, after 1 of 2 batches: nothing trained, nothing saved"
    )
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


@pytest.mark.slow
def test_a_signal_during_the_last_validation_exits_non_zero_after_the_last_checkpoint(trained, tmp_path: Path) -> None:
    # fit && test must not carry on: the exit code says the run was asked to stop.
    run_dir = tmp_path / "logs" / "default" / "version_0"
    proc = lightsum("fit", tmp_path / "logs", pause=pause(tmp_path, "validation", 1, epoch=EPOCHS - 1))
    stderr = signal_when_paused(proc, tmp_path, signal.SIGINT)
    assert proc.returncode == 130, stderr[-3000:]
    assert stop_line(stderr) == (
        "lightsum: stopped by SIGINT after the last epoch and its validation: training is "
        f"complete, its checkpoints are in {run_dir / 'checkpoints'}"
    )
    # The last epoch's validation finished and its checkpoints were written as usual: this run is the
    # run never stopped, metrics and weights.
    last = run_dir / "checkpoints" / "last.ckpt"
    assert read_checkpoint(str(last))["epoch"] == EPOCHS - 1
    expected = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, value in torch.load(last, weights_only=True)["state_dict"].items():
        assert torch.equal(value, expected[name]), name
    assert scalars(run_dir)["val/min_recall"] == scalars(trained)["val/min_recall"]


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fit with accumulate_grad_batches=4, never stopped: its run folder."""
    root = tmp_path_factory.mktemp("accumulated")
    finished(lightsum("fit", root, "--trainer.accumulate_grad_batches=4"))
    return root / "default" / "version_0"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("batch", "stops_after", "step"),
    [
        (14, "batch 16 of epoch 1", 8 + 4),  # inside the window of batches 13-16: at its end
        (29, "epoch 1 and its validation", 8 + 8),  # inside the epoch's last, short window (29-30): at the epoch's end
    ],
)
def test_a_stop_inside_an_accumulation_window_waits_for_its_end_and_resumes_exactly(
    batch, stops_after, step, accumulated, tmp_path: Path
) -> None:
    # Epochs of 30 batches (480 training sequences of 16): 8 optimizer steps, the last after 2 batches.
    run_dir = tmp_path / "logs" / "default" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = lightsum(
        "fit", tmp_path / "logs", "--trainer.accumulate_grad_batches=4", pause=pause(tmp_path, "train", batch, epoch=1)
    )
    stderr = signal_when_paused(proc, tmp_path, signal.SIGTERM)
    assert proc.returncode == 143, stderr[-3000:]
    assert stop_line(stderr) == (
        f"lightsum: stopped by SIGTERM after {stops_after}; saved {last}: the same command "
        "with --ckpt_path last continues from there"
    )
    assert read_checkpoint(str(last))["global_step"] == step
    finished(lightsum("fit", tmp_path / "logs", "--trainer.accumulate_grad_batches=4", "--ckpt_path=last"))
    expected = torch.load(accumulated / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, value in torch.load(last, weights_only=True)["state_dict"].items():
        assert torch.equal(value, expected[name]), name
    # train/loss at each step once, each value the uninterrupted run's.
    assert scalars(run_dir)["train/loss"] == scalars(accumulated)["train/loss"]
    assert [s for s, _ in scalars(run_dir)["train/loss"]] == list(range(EPOCHS * 8))
