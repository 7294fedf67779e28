"""lightsum.checkpoints: a user's checkpoint is read whole, with torch's weights-only loader, or refused in one line."""

from __future__ import annotations

import collections
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import tiny
from lightsum.checkpoints import read_checkpoint
from lightsum.cli import main


@pytest.fixture
def good(fitted) -> Path:
    return Path(fitted.trainer.checkpoint_callback.best_model_path)  # the session's tiny fit (conftest)


class Evil:
    """What a hostile checkpoint might carry: unpickling it would run its code."""

    def __reduce__(self):
        return (print, ("this ran",))


def edited(good: Path, tmp_path: Path, change) -> Path:
    checkpoint = torch.load(good, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path := tmp_path / "edited.ckpt")
    return path


def test_a_good_checkpoint_reads(good: Path) -> None:
    assert read_checkpoint(str(good))["global_step"] > 0


def test_damaged_and_foreign_files_are_refused_naming_the_problem(good: Path, tmp_path: Path, capsys) -> None:
    (text := tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=f"checkpoint is corrupt or not a torch checkpoint: {text}"):
        read_checkpoint(str(text))
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ValueError, match="corrupt"):
        read_checkpoint(str(cut))
    torch.save({"state_dict": {}, "payload": Evil()}, evil := tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match=rf"checkpoint {evil} holds a pickled print, which only running its "
                                         r"code could rebuild: refused"):
        read_checkpoint(str(evil))
    assert "this ran" not in capsys.readouterr().out  # nothing of it executed
    torch.save(collections.OrderedDict(weight=torch.zeros(3)), bare := tmp_path / "bare.ckpt")  # a plain state_dict
    with pytest.raises(ValueError, match=f"{bare} is not a lightsum checkpoint: it has no state_dict, hyper_parameters, "
                                         "epoch, global_step"):
        read_checkpoint(str(bare))


def test_weights_that_do_not_fit_their_hyperparameters_are_refused(good: Path, tmp_path: Path) -> None:
    wider = edited(good, tmp_path, lambda c: c["hyper_parameters"].update(hidden_size=16))
    with pytest.raises(ValueError, match=r"net.lstm.weight_ih_l0 has shape \(32, 1\), but its hyperparameters make \(64, 1\)"):
        read_checkpoint(str(wider))
    missing = edited(good, tmp_path, lambda c: c["state_dict"].pop("net.head.bias"))
    with pytest.raises(ValueError, match="no weights for net.head.bias"):
        read_checkpoint(str(missing))
    broken = edited(good, tmp_path, lambda c: c["hyper_parameters"].update(dropout=3.0))
    with pytest.raises(ValueError, match=r"its hyperparameters do not build a SumClassifier \(model.dropout must be"):
        read_checkpoint(str(broken))


@pytest.mark.parametrize("command", ["test"])  # fit, validate and predict read --ckpt_path in the same place
def test_the_cli_refuses_a_hostile_checkpoint_in_one_line(command: str, tmp_path: Path, capsys) -> None:
    torch.save({"state_dict": {}, "payload": Evil()}, evil := tmp_path / "evil.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main([command, *tiny(tmp_path / "logs"), f"--ckpt_path={evil}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr()
    assert err.err.strip().splitlines()[-1].startswith(f"lightsum: error: checkpoint {evil} holds a pickled print")
    assert "this ran" not in err.out
    assert zipfile.is_zipfile(evil)
