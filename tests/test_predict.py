"""`predict` on users' files: reading CSV/.npy, the output CSV, and refusing bad input cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from conftest import REPO, tiny
from lightsum import SumClassifier, SumDataModule
from lightsum.main import main
from lightsum.predict_io import PredictionCSV, read_sequences

DIGITS = np.random.default_rng(7).integers(0, 10, size=(300, 30))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cli = main(["fit", *tiny(tmp_path_factory.mktemp("logs"), epochs=1)])
    return Path(cli.trainer.checkpoint_callback.best_model_path)


def write_csv(path: Path, rows: np.ndarray, comma: bool = True) -> Path:
    path.write_text("".join((",".join if comma else "".join)(map(str, r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("form", ["comma", "string", "npy"])
def test_read_sequences_forms(form: str, tmp_path: Path) -> None:
    if form == "npy":
        np.save(path := tmp_path / "x.npy", DIGITS.astype(np.int64))
    else:
        path = write_csv(tmp_path / "x.csv", DIGITS, comma=form == "comma")
        path.write_text(path.read_text().replace(",", " , ", 5) + "\n\n")  # spaces, trailing blank lines
    if form == "string":  # Windows line endings and a byte-order mark, as some editors save CSV
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    digits = read_sequences(path, 30)
    assert digits.dtype == torch.uint8 and torch.equal(digits, torch.as_tensor(DIGITS, dtype=torch.uint8))


BAD_FILES = [
    ("short.csv", "1,2,3\n", "line 1: expected 30 digits, got 3"),
    ("letter.csv", "0" * 30 + "\n" + "0" * 29 + "x\n", "line 2: 'x' is not a digit"),
    ("negative.csv", ",".join(["1"] * 29 + ["-1"]) + "\n", "line 1: '-1' is not a digit"),
    ("two_digit.csv", ",".join(["1"] * 29 + ["10"]) + "\n", "line 1: '10' is not a digit"),
    ("gap.csv", "0" * 30 + "\n\n" + "0" * 30 + "\n", "line 2: expected 30 digits, got 0"),
    ("header.csv", "digits\n" + "0" * 30 + "\n", "line 1: expected 30 digits, got 6"),
    ("empty.csv", "", "holds no sequences"),
]


@pytest.mark.parametrize(("name", "text", "named"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_text_files_name_the_line(name: str, text: str, named: str, tmp_path: Path) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=named):
        read_sequences(tmp_path / name, 30)


@pytest.mark.parametrize(("array", "named"), [
    (np.zeros((4, 29), dtype=np.int64), r"shape \(N, 30\), got \(4, 29\)"),
    (np.zeros((4, 30), dtype=np.float32), "integers 0-9, got dtype float32"),
    (np.vstack([np.zeros((2, 30), int), np.full((1, 30), 12)]), "row 2, column 0: 12 is not a digit 0-9"),
    (np.zeros((0, 30), dtype=np.int64), "holds no sequences"),
])
def test_bad_npy_files_name_the_row(array: np.ndarray, named: str, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(ValueError, match=named):
        read_sequences(tmp_path / "x.npy", 30)


def test_npy_suffix_in_any_case(tmp_path: Path) -> None:
    with open(tmp_path / "x.NPY", "wb") as f:  # np.save(path) would append ".npy"
        np.save(f, DIGITS)
    assert torch.equal(read_sequences(tmp_path / "x.NPY", 30), torch.as_tensor(DIGITS, dtype=torch.uint8))


def test_empty_and_cut_short_npy_files(tmp_path: Path) -> None:
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=f"data.predict_path: {tmp_path / 'empty.npy'} is empty"):
        read_sequences(tmp_path / "empty.npy", 30)
    np.save(tmp_path / "whole.npy", DIGITS)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "whole.npy").read_bytes()[:200])
    with pytest.raises(ValueError, match=f"{tmp_path / 'cut.npy'} is not a readable .npy array"):
        read_sequences(tmp_path / "cut.npy", 30)


def test_missing_binary_and_pickled_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="file not found"):
        read_sequences(tmp_path / "nope.csv", 30)
    with pytest.raises(ValueError, match=f"{tmp_path} is not a file"):
        read_sequences(tmp_path, 30)
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ValueError, match="not a text file"):
        read_sequences(tmp_path / "bin.csv", 30)
    np.save(tmp_path / "obj.npy", np.array([[object()]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable .npy"):
        read_sequences(tmp_path / "obj.npy", 30)


def predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightsum", "predict", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=180)


def read_predictions(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    assert lines[0] == "row,probability,label"
    return np.array([[float(v) for v in line.split(",")] for line in lines[1:]])


def test_predict_a_csv_file(checkpoint: Path, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "mine.csv", DIGITS, comma=False)
    proc = predict(*tiny(tmp_path / "logs"), f"--ckpt_path={checkpoint}", f"--data.predict_path={source}",
                   "--trainer.enable_progress_bar=true")
    assert proc.returncode == 0, proc.stderr
    assert "Predicting" in proc.stdout  # the progress bar (Lightning draws it on stdout)
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
    proc = predict(*tiny(tmp_path / "logs"), f"--ckpt_path={checkpoint}", f"--data.predict_path={source}",
                   f"--predictions.path={out}")
    assert proc.returncode == 0, proc.stderr
    assert len(read_predictions(out)) == len(DIGITS)
    # Without predict_path: the generated test set, into the run folder.
    proc = predict(*tiny(tmp_path / "logs"), f"--ckpt_path={checkpoint}")
    assert proc.returncode == 0, proc.stderr
    assert len(read_predictions(next((tmp_path / "logs").rglob("predictions.csv")))) == 500


def test_bad_input_is_refused_before_anything_is_written(checkpoint: Path, tmp_path: Path) -> None:
    source = tmp_path / "mine.csv"
    source.write_text("0" * 30 + "\n" + "7" * 31 + "\n")
    out = tmp_path / "mine.predictions.csv"
    out.write_text("earlier results\n")
    proc = predict(*tiny(tmp_path / "logs"), f"--ckpt_path={checkpoint}", f"--data.predict_path={source}")
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
        return ([f"--data.predict_path={source}", f"--predictions.path={tmp_path / 'out'}"],
                f"predictions.path: {tmp_path / 'out'} is a folder; name a file, e.g. {tmp_path / 'out' / 'predictions.csv'}")
    if case == "default output is a folder":
        (tmp_path / "mine.predictions.csv").mkdir()
        return ([f"--data.predict_path={source}"],
                f"predictions.path: {tmp_path / 'mine.predictions.csv'} is a folder; name a file, "
                f"e.g. {tmp_path / 'mine.predictions.csv' / 'predictions.csv'}")
    if case == "output is the input":
        return [f"--data.predict_path={source}", f"--predictions.path={source}"], f"predictions.path would overwrite the input file {source}"
    if case == "output inside a file":
        return ([f"--data.predict_path={source}", f"--predictions.path={source}/out.csv"],
                f"predictions.path: cannot write {source}/out.csv: {source} is a file, not a folder")
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["empty npy", "output is a folder", "default output is a folder", "output is the input",
                                  "output inside a file"])
def test_bad_files_give_one_line_and_no_run_folder(case: str, checkpoint: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    args, expected = bad_input(tmp_path, case)
    with pytest.raises(SystemExit) as exit_info:  # any other exception would be a traceback
        main(["predict", *tiny(tmp_path / "logs"), f"--ckpt_path={checkpoint}", *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"lightsum: error: {expected}"
    assert not (tmp_path / "logs").exists()


def test_the_input_is_read_once(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI checks the whole file before building the trainer; the data module reuses what it read.
    from lightsum import predict_io

    reads = []
    monkeypatch.setattr(predict_io, "_load", lambda path, seq_len, load=predict_io._load: reads.append(path) or load(path, seq_len))
    source = write_csv(tmp_path / "mine.csv", DIGITS)
    main(["predict", *tiny(tmp_path / "logs"), f"--ckpt_path={checkpoint}", f"--data.predict_path={source}"])
    assert reads == [source]
    assert len(read_predictions(tmp_path / "mine.predictions.csv")) == len(DIGITS)
    assert predict_io._checked == {}


def test_checkpoint_and_data_lengths_must_agree(checkpoint: Path, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "short.csv", DIGITS[:, :20])
    proc = predict(*tiny(tmp_path / "logs"), f"--ckpt_path={checkpoint}", f"--data.predict_path={source}",
                   "--data.seq_len=20")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model reads seq_len=30 but data.seq_len is 20" in proc.stderr.strip().splitlines()[-1]


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
    kept = [tmp_path / f".mine.predictions.csv.partial-{host}-{os.getppid()}",  # a live writer's
            tmp_path / f".mine.predictions.csv.partial-other-host-{finished.pid}",  # another host's
            tmp_path / f".other.csv.partial-{host}-{finished.pid}"]  # another output's
    for partial in (orphan, *kept):
        partial.write_text("row,probability,label\n0,0.5,1\n")
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, callbacks=[PredictionCSV()])
    trainer.predict(SumClassifier(hidden_size=8), datamodule=SumDataModule(predict_path=str(source)))
    assert len(read_predictions(tmp_path / "mine.predictions.csv")) == len(DIGITS)
    assert not orphan.exists() and all(p.exists() for p in kept)
