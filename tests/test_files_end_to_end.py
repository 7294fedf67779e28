"""Users' files through the whole toolkit: every format through fit, test, validate, predict and report
on the real CLI; every sampling strategy and loss; DDP on a file; a SIGTERM mid-epoch resumed exactly;
bad files refused in one line."""

from __future__ import annotations

import csv
import signal
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO, lightsum_process, scalars, tiny_files, toy_sequences, write_sequences
from test_preemption import SignalAt, assert_same_weights

from lightsum import SumClassifier
from lightsum.callbacks import Preemption, RandomStates, TrainLoss
from lightsum.callbacks.predictions import prediction_target
from lightsum.checkpoints import read_checkpoint
from lightsum.cli import main
from lightsum.data import SequenceFiles

FORMATS = {
    "csv-numbers": ("train.csv", {}, None),
    "csv-tokens-named": ("train.csv", {"steps": "tokens"}, ("ok", "fraud")),
    "npz-3-features": ("train.npz", {"features": 3}, None),
    "parquet-2-features": ("train.parquet", {"features": 2}, None),
    "parquet-tokens": ("train.parquet", {"steps": "tokens"}, None),
}


def one_line_error(args: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.slow
@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_fits_tests_validates_predicts_and_reports(kind: str, tmp_path: Path, run_root: Path) -> None:
    name, options, names = FORMATS[kind]
    raw = toy_sequences(600, **options)
    train = write_sequences(tmp_path / name, raw, label_names=names)
    args = [*tiny_files(run_root, train), *(["--data.positive_label=fraud"] if names else [])]
    fitted = main(["fit", *args])
    run_dir = Path(fitted.trainer.log_dir)
    best = fitted.trainer.checkpoint_callback.best_model_path
    assert {"val/min_recall", "val/average_precision_minority", "train/loss"} <= scalars(run_dir).keys()
    tested = main(["test", *args])
    assert float(tested.trainer.callback_metrics["test/sequences"]) == 120  # 20% of 600, stratified
    validated = main(["validate", *args])
    assert float(validated.trainer.callback_metrics["val/sequences"]) == 120
    new = toy_sequences(37, seed=9, **options)
    source = write_sequences(tmp_path / f"new{train.suffix}", new, labels=False)
    main(["predict", *args, f"--data.predict_path={source}"])
    with open(prediction_target(None, source)) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["row"]) for r in rows] == list(range(37))  # one row per input row, in order
    # A loaded checkpoint answers the raw sequences as predict did.
    model = SumClassifier.load_from_checkpoint(best)
    sequences = (
        new["x"] if options.get("steps") == "tokens" else [new["x"][i, :n] for i, n in enumerate(new["lengths"])]
    )
    probs = model.predict_proba(sequences)
    np.testing.assert_allclose(probs, [float(r["probability"]) for r in rows], rtol=1e-5, atol=1e-6)
    labels = [r["label"] for r in rows]
    classes = ["ok", "fraud"] if names else ["0", "1"]  # class 1 is the positive label
    assert labels == [classes[int(p >= float(model.decision_threshold))] for p in probs]
    report = lightsum_process("report", str(run_dir), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert "| files/version_0 |" in (tmp_path / "report" / "report.md").read_text()


class AdamClassifier(SumClassifier):
    def configure_optimizers(self):  # what the CLI would inject
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def fit_file(train: Path, root: Path, ckpt_path: str | None = None, stop: SignalAt | None = None, **data):
    pl.seed_everything(0)
    datamodule = SequenceFiles(train_path=str(train), batch_size=32, **data)
    model = AdamClassifier(
        seq_len=None, schema=datamodule.schema(), hidden_size=8, class_balance=datamodule.class_balance
    )
    callbacks = [RandomStates(), TrainLoss(), *([stop] if stop else []), Preemption()]
    callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True))
    trainer = pl.Trainer(
        max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer, model


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["oversample", "undersample", "weighted"])
def test_a_sigterm_mid_epoch_on_a_file_resumes_bitwise_equal(sampling: str, tmp_path: Path) -> None:
    train = write_sequences(tmp_path / "train.csv", toy_sequences(400))
    _, whole = fit_file(train, tmp_path / "whole", sampling=sampling)
    steps = len(whole.trainer.train_dataloader)
    stop = SignalAt(steps + steps // 2, signal.SIGTERM)  # the middle of the second epoch
    with pytest.raises(SystemExit) as stopped:
        fit_file(train, tmp_path / "parts", stop=stop, sampling=sampling)
    assert stopped.value.code == 128 + signal.SIGTERM
    last = tmp_path / "parts" / "ckpt" / "last.ckpt"
    assert read_checkpoint(str(last))["global_step"] == stop.step
    trainer, resumed = fit_file(train, tmp_path / "parts", ckpt_path=str(last), sampling=sampling)
    assert trainer.global_step == whole.trainer.global_step
    assert_same_weights(whole, resumed)
    for name in ("train/recall_0", "train/recall_1", "train/loss_epoch"):
        assert torch.equal(trainer.callback_metrics[name], whole.trainer.callback_metrics[name]), name


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("data.sampling", "none"),
        ("data.sampling", "oversample"),
        ("data.sampling", "undersample"),
        ("data.sampling", "weighted"),
        ("data.sampling_ratio", "0.5"),
        ("model.pos_weight", "balanced"),
        ("model.loss", "focal"),
        ("model.loss", "logit_adjusted"),
        ("model.recurrent_activation", "hard_sigmoid"),
    ],
)
def test_every_strategy_and_loss_trains_on_a_file(option: str, value: str, tmp_path: Path, run_root: Path) -> None:
    train = write_sequences(tmp_path / "train.npz", toy_sequences(500, features=2))
    extra = ["--data.sampling=oversample"] if option == "data.sampling_ratio" else []
    cli = main(["fit", *tiny_files(run_root, train, epochs=1), f"--{option}={value}", *extra])
    metrics = cli.trainer.callback_metrics
    for name in ("train/loss_epoch", "val/loss", "val/min_recall", "val/average_precision_minority"):
        assert torch.isfinite(metrics[name]), name
    if value == "balanced":  # negatives / positives of the training split
        negatives, positives = cli.datamodule.class_balance.counts
        assert float(cli.model.pos_weight) == pytest.approx(negatives / positives)
    if value == "logit_adjusted":
        share = cli.datamodule.class_balance.served_positive_share
        assert float(cli.model.logit_adjustment) == pytest.approx(np.log(share / (1 - share)), rel=1e-5)


@pytest.mark.slow
def test_two_process_ddp_on_a_file_scores_as_one_process(tmp_path: Path, run_root: Path) -> None:
    train = write_sequences(tmp_path / "train.parquet", toy_sequences(999, features=2))  # odd splits
    common = [*tiny_files(run_root, train), "--trainer.accelerator=cpu"]
    ddp = ["--config", str(REPO / "configs" / "ddp.yaml")]
    fit = lightsum_process("fit", *common, *ddp)
    assert fit.returncode == 0, fit.stderr[-3000:]
    (best,) = (run_root / "files" / "version_0").glob("checkpoints/best-*.ckpt")
    figures = []
    for extra in (ddp, []):
        proc = lightsum_process("test", *common, *extra, f"--ckpt_path={best}", cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
        figures.append(
            {
                line.split()[0]: float(line.split()[1])
                for line in proc.stdout.splitlines()
                if line.strip().startswith("test/")
            }
        )
    two, one = figures
    assert one["test/sequences"] == two["test/sequences"] == round(999 * 0.2)  # each sequence once over 2 ranks
    assert two.keys() == one.keys() and len(one) >= 9
    for tag in one:
        assert two[tag] == pytest.approx(one[tag], abs=1e-6), tag


def test_bad_files_are_refused_in_one_line(tmp_path: Path, run_root: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope.csv"
    err = one_line_error(["fit", *tiny_files(run_root, missing)], capsys)
    assert "data.train_path" in err and "nope.csv" in err
    one = toy_sequences(100)
    one["y"][:] = 1
    err = one_line_error(["fit", *tiny_files(run_root, write_sequences(tmp_path / "one.csv", one))], capsys)
    assert "holds one class only ('1')" in err
    args = ["fit", "--config", str(REPO / "configs" / "files.yaml"), f"--trainer.logger.init_args.save_dir={run_root}"]
    err = one_line_error(args, capsys)
    assert "data.train_path is not set" in err
    assert not run_root.exists()  # refused before anything was made
