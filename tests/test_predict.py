"""`predict` end to end: users' files in, the output CSV out, bad input refused before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from conftest import lightsum_process, tiny

from lightsum import SumClassifier, SumDataModule
from lightsum.callbacks import PredictionCSV
from lightsum.callbacks.predictions import check_target, prediction_target
from lightsum.cli import main

DIGITS = np.random.default_rng(7).integers(0, 10, size=(300, 30))


@pytest.fixture
def checkpoint(fitted) -> Path:
    return Path(fitted.trainer.checkpoint_callback.best_model_path)  # the session's tiny fit (conftest)


def write_csv(path: Path, rows: np.ndarray, comma: bool = True) -> Path:
    path.write_text("".join((",".join if comma else "".join)(map(str, r)) + "\n" for r in rows))
    return path


def read_predictions(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    assert lines[0] == "row,probability,label"
    return np.array([[float(v) for v in line.split(",")] for line in lines[1:]])


def test_predict_a_csv_file(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightsum.data import digit_sums

    reads = []  # the CLI checks the whole file before the trainer exists; setup() serves what it read then
    monkeypatch.setattr(
        digit_sums,
        "read_sequences",
        lambda path, seq_len, read=digit_sums.read_sequences: reads.append(path) or read(path, seq_len),
    )
    source = write_csv(tmp_path / "mine.csv", DIGITS, comma=False)
    main(
        [
            "predict",
            *tiny(tmp_path / "logs"),
            f"--ckpt_path={checkpoint}",
            f"--data.predict_path={source}",
            "--trainer.enable_progress_bar=true",
        ]
    )
    assert reads == [str(source)]
    assert "Predicting" in capsys.readouterr().out  # the progress bar (Lightning draws it on stdout)
    out = tmp_path / "mine.predictions.csv"  # the documented default: beside the input
    rows = read_predictions(out)
    model = SumClassifier.load_from_checkpoint(checkpoint)
    np.testing.assert_array_equal(rows[:, 0], np.arange(len(DIGITS)))
    np.testing.assert_allclose(rows[:, 1], model.predict_proba(DIGITS), rtol=1e-6)
    np.testing.assert_array_equal(rows[:, 2], model.predict(DIGITS))
    assert not list(tmp_path.glob(".*partial*"))


def test_predict_npy_to_a_chosen_path_and_the_test_set(checkpoint: Path, tmp_path: Path) -> None:
    np.save(source := tmp_path / "mine.npy", DIGITS.astype(np.uint8))
    out = tmp_path / "sub" / "out.csv"
    main(
        [
            "predict",
            *tiny(tmp_path / "logs"),
            f"--ckpt_path={checkpoint}",
            f"--data.predict_path={source}",
            f"--predictions.path={out}",
        ]
    )
    assert len(read_predictions(out)) == len(DIGITS)
    # Without predict_path: the generated test set, into the checkpoint's run folder; no run of its own.
    main(["predict", *tiny(tmp_path / "logs"), f"--ckpt_path={checkpoint}"])
    assert len(read_predictions(checkpoint.parent.parent / "predictions.csv")) == 500
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_bad_input_is_refused_before_anything_is_written(checkpoint: Path, tmp_path: Path) -> None:
    source = tmp_path / "mine.csv"
    source.write_text("0" * 30 + "\n" + "7" * 31 + "\n")
    out = tmp_path / "mine.predictions.csv"
    out.write_text("earlier results\n")
    proc = lightsum_process(
        "predict", *tiny(tmp_path / "logs"), f"--ckpt_path={checkpoint}", f"--data.predict_path={source}"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"lightsum: error: data.predict_path: {source}, line 2: expected 30 digits, got 31: '{'7' * 31}'"
    )
    assert out.read_text() == "earlier results\n"
    assert not (tmp_path / "logs").exists()  # no run folder either


def bad_input(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """Arguments of a ``predict`` with one bad input file or output path, and the error it must give."""
    source = write_csv(tmp_path / "mine.csv", DIGITS)
    if case == "empty npy":
        (empty := tmp_path / "mine.npy").write_bytes(b"")
        return [f"--data.predict_path={empty}"], f"data.predict_path: {empty} is empty (0 bytes), not a .npy array"
    if case == "output is a folder":
        (tmp_path / "out").mkdir()
        return (
            [f"--data.predict_path={source}", f"--predictions.path={tmp_path / 'out'}"],
            f"predictions.path: {tmp_path / 'out'} is a folder; name a file, e.g. {tmp_path / 'out' / 'predictions.csv'}",
        )
    if case == "default output is a folder":
        (tmp_path / "mine.predictions.csv").mkdir()
        return (
            [f"--data.predict_path={source}"],
            f"predictions.path: {tmp_path / 'mine.predictions.csv'} is a folder; name a file, "
            f"e.g. {tmp_path / 'mine.predictions.csv' / 'predictions.csv'}",
        )
    if case == "output is the input":
        return [
            f"--data.predict_path={source}",
            f"--predictions.path={source}",
        ], f"predictions.path would overwrite the input file {source}"
    if case == "output inside a file":
        return (
            [f"--data.predict_path={source}", f"--predictions.path={source}/out.csv"],
            f"predictions.path: cannot write {source}/out.csv: {source} is a file, not a folder",
        )
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["empty npy", "default output is a folder"]
)  # the rest: test_the_output_path_is_checked
def test_bad_files_give_one_line_and_no_run_folder(
    case: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args, expected = bad_input(tmp_path, case)
    with pytest.raises(SystemExit) as exit_info:  # any other exception would be a traceback
        main(["predict", *tiny(tmp_path / "logs"), f"--ckpt_path={checkpoint}", *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"lightsum: error: {expected}"
    assert not (tmp_path / "logs").exists()


def test_checkpoint_and_data_lengths_must_agree(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = write_csv(tmp_path / "short.csv", DIGITS[:, :20])
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "predict",
                *tiny(tmp_path / "logs"),
                f"--ckpt_path={checkpoint}",
                f"--data.predict_path={source}",
                "--data.seq_len=20",
            ]
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lightsum: error: the model reads seq_len=30 but data.seq_len is 20: use --data.seq_len 30 with {checkpoint}"
    )


@pytest.mark.parametrize(
    "case", ["output is a folder", "default output is a folder", "output is the input", "output inside a file"]
)
def test_the_output_path_is_checked(case: str, tmp_path: Path) -> None:
    args, expected = bad_input(tmp_path, case)
    options = dict(arg.removeprefix("--").split("=", 1) for arg in args)
    target = prediction_target(options.get("predictions.path"), options["data.predict_path"])
    with pytest.raises(ValueError) as error:
        check_target(target, {"the input file": options["data.predict_path"]})
    assert str(error.value) == expected


class FailingModel(SumClassifier):
    """Fails at its third batch, after the writer has written two; notes the writer's partial files then."""

    def predict_step(self, batch, batch_idx):
        if batch_idx == 2:
            self.partials_at_failure = sorted(p.name for p in self.folder.glob(".*partial*"))
            raise RuntimeError("boom")
        return super().predict_step(batch, batch_idx)


def test_a_failure_mid_predict_leaves_earlier_output_intact_and_no_partial_file(tmp_path: Path) -> None:
    np.save(source := tmp_path / "mine.npy", DIGITS)
    out = tmp_path / "mine.predictions.csv"
    out.write_bytes(earlier := b"row,probability,label\r\n0,0.25,0\r\n")  # an earlier run's output
    data = SumDataModule(batch_size=50, eval_batch_size=50, predict_path=str(source))
    writer = PredictionCSV()
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, callbacks=[writer])
    model = FailingModel(hidden_size=8)
    model.folder = tmp_path
    with pytest.raises(RuntimeError, match="boom"):
        trainer.predict(model, datamodule=data)
    assert out.read_bytes() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.npy", "mine.predictions.csv"]
    assert writer._rows == 100 and len(model.partials_at_failure) == 1  # the writer had started


def test_a_killed_writers_partial_file_is_removed_by_the_next_run(tmp_path: Path) -> None:
    import socket

    np.save(source := tmp_path / "mine.npy", DIGITS)
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # its pid now names no process, as after kill -9
    host = socket.gethostname()
    orphan = tmp_path / f".mine.predictions.csv.partial-{host}-{finished.pid}"
    kept = [
        tmp_path / f".mine.predictions.csv.partial-{host}-{os.getppid()}",  # a live writer's
        tmp_path / f".mine.predictions.csv.partial-other-host-{finished.pid}",  # another host's
        tmp_path / f".other.csv.partial-{host}-{finished.pid}",
    ]  # another output's
    for partial in (orphan, *kept):
        partial.write_text("row,probability,label\n0,0.5,1\n")
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, callbacks=[PredictionCSV()])
    trainer.predict(SumClassifier(hidden_size=8), datamodule=SumDataModule(predict_path=str(source)))
    assert len(read_predictions(tmp_path / "mine.predictions.csv")) == len(DIGITS)
    assert not orphan.exists() and all(p.exists() for p in kept)


def test_a_full_disk_while_predicting_is_one_line_and_keeps_the_earlier_output(
    checkpoint: Path, tmp_path: Path, full_disk, capsys: pytest.CaptureFixture
) -> None:
    source = write_csv(tmp_path / "mine.csv", DIGITS)
    out = tmp_path / "mine.predictions.csv"
    out.write_bytes(earlier := b"row,probability,label\n0,0.25,0\n")
    full_disk(1000)  # the header and a few rows fit
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "predict",
                *tiny(tmp_path / "logs"),
                f"--ckpt_path={checkpoint}",
                f"--data.predict_path={source}",
                "--data.eval_batch_size=50",
            ]
        )
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == f"lightsum: error: cannot write {out}: No space left on device"
    )
    assert out.read_bytes() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.csv", "mine.predictions.csv"]
