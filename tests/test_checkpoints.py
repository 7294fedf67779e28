"""lightsum.checkpoints: a user's checkpoint is read whole, with torch's weights-only loader, or refused in one line."""

from __future__ import annotations

import collections
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import FITTED_EPOCHS, srun_variables, tiny

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
    with pytest.raises(
        ValueError,
        match=rf"checkpoint {evil} holds a pickled print, which only running its "
        r"code could rebuild: refused",
    ):
        read_checkpoint(str(evil))
    assert "this ran" not in capsys.readouterr().out  # nothing of it executed
    torch.save(collections.OrderedDict(weight=torch.zeros(3)), bare := tmp_path / "bare.ckpt")  # a plain state_dict
    with pytest.raises(
        ValueError,
        match=f"{bare} is not a lightsum checkpoint: it has no state_dict, hyper_parameters, epoch, global_step",
    ):
        read_checkpoint(str(bare))


def test_weights_that_do_not_fit_their_hyperparameters_are_refused(good: Path, tmp_path: Path) -> None:
    wider = edited(good, tmp_path, lambda c: c["hyper_parameters"].update(hidden_size=16))
    with pytest.raises(
        ValueError, match=r"net.lstm.weight_ih_l0 has shape \(32, 1\), but its hyperparameters make \(64, 1\)"
    ):
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


# --- every checkpoint lightsum loads goes through the reader, whatever the environment says ------------


class Marker:
    """A pickled payload that, if it were ever unpickled, would run a shell command creating a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def hostile(good: Path, target: Path, marker: Path) -> None:
    """``target``: the good checkpoint with a code-running object added (written by torch.save, so a full pickler)."""
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["payload"] = Marker(marker)
    torch.save(checkpoint, target)


def copied_run(fitted, root: Path) -> Path:
    """A copy of the session's tiny fit as ``root/default/version_0``: checkpoints, config and event files."""
    run = root / "default" / "version_0"
    shutil.copytree(fitted.trainer.log_dir, run)
    return run


def run_fit(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("damage", ["pickled", "empty", "truncated"])
def test_resume_from_last_skips_a_damaged_last_ckpt_for_the_newest_that_loads(
    damage: str, fitted, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # what users set to load old checkpoints
    run = copied_run(fitted, root := tmp_path / "logs")
    last, marker = run / "checkpoints" / "last.ckpt", tmp_path / "marker"
    if damage == "pickled":
        hostile(last, last, marker)
    else:
        last.write_bytes(b"" if damage == "empty" else last.read_bytes()[:2000])
    for best in run.glob("checkpoints/best-*.ckpt"):
        os.utime(best, (1, 1))  # older than last.ckpt, which is tried first
    code, err = run_fit([*tiny(root, epochs=FITTED_EPOCHS + 1), "--ckpt_path=last"], capsys)
    assert code == 0, err
    assert f"lightsum: skipped {last}: " in err
    assert not marker.exists()  # nothing of the payload ran
    assert read_checkpoint(last)["epoch"] == FITTED_EPOCHS  # the run went on from the best checkpoint, one more epoch


def test_resume_with_no_loadable_checkpoint_stops_in_one_line_and_changes_nothing(
    fitted, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    run = copied_run(fitted, root := tmp_path / "logs")
    marker = tmp_path / "marker"
    for path in run.glob("checkpoints/*.ckpt"):
        hostile(path, path, marker)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, err = run_fit([*tiny(root, epochs=FITTED_EPOCHS + 1), "--ckpt_path=last"], capsys)
    assert code == 2
    (line,) = err.strip().splitlines()  # each refused checkpoint is named in it, not in notes before it
    assert line.startswith(f"lightsum: error: no checkpoint in {run} loads (checkpoint ")
    assert not marker.exists()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_requeued_slurm_job_skips_a_damaged_hpc_checkpoint(fitted, tmp_path: Path, monkeypatch, capsys) -> None:
    for key, value in srun_variables("77").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "logs" / "default" / "slurm_77"
    shutil.copytree(fitted.trainer.log_dir, run)
    hostile(run / "checkpoints" / "last.ckpt", hpc := run / "hpc_ckpt_1.ckpt", marker := tmp_path / "marker")
    code, err = run_fit([*tiny(tmp_path / "logs", epochs=FITTED_EPOCHS + 1)], capsys)
    assert code == 0, err
    assert f"lightsum: skipped {hpc}: checkpoint {hpc} holds a pickled posix.system" in err
    assert not marker.exists()
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == FITTED_EPOCHS


def test_lightnings_own_restore_reads_weights_only(good: Path, tmp_path: Path, monkeypatch) -> None:
    from lightsum.atomic import AtomicCheckpointIO

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    hostile(good, evil := tmp_path / "evil.ckpt", marker := tmp_path / "marker")
    with pytest.raises(ValueError, match="holds a pickled posix.system"):
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)  # what `--weights_only false` would ask
    assert not marker.exists()


def test_weights_only_false_is_refused(tmp_path: Path, capsys) -> None:
    code, err = run_fit([*tiny(tmp_path), "--weights_only=false"], capsys)
    assert code == 2 and err.strip().startswith(
        "lightsum: error: --weights_only false: lightsum reads every checkpoint"
    )


def test_a_foreign_checkpoint_plugin_is_refused(tmp_path: Path, capsys) -> None:
    plugin = '[{"class_path": "pytorch_lightning.plugins.AsyncCheckpointIO"}]'
    code, err = run_fit([*tiny(tmp_path), f"--trainer.plugins={plugin}"], capsys)
    assert code == 2 and err.strip().startswith(
        "lightsum: error: trainer.plugins: AsyncCheckpointIO would read checkpoints"
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c["hyper_parameters"].update(hidden_size=10**6),
            r"make a model of 16000.1 GB, and this machine has",
        ),
        (
            lambda c: c.update(hyper_parameters=[["hidden_size", 8]]),
            "hyper_parameters must be a mapping of names, got list",
        ),
        (lambda c: c["state_dict"].update({"net.head.bias": [0.0]}), "net.head.bias is a list, not a tensor"),
        (lambda c: c.update(state_dict=3), "state_dict must be a mapping of tensors, got int"),
        (
            lambda c: c["hyper_parameters"].update(hidden_size=10**10),
            "its hyperparameters do not build a SumClassifier",
        ),
        (lambda c: c["hyper_parameters"].update(num_layers=10**8), "ask for 100000000 LSTM layers"),
    ],
)
def test_hyperparameters_and_weights_of_the_wrong_kind_or_size_are_refused(
    change, message, good: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        read_checkpoint(edited(good, tmp_path, change))


def test_resuming_a_finished_run_says_there_is_nothing_left_to_train(fitted, tmp_path: Path, capsys) -> None:
    run = copied_run(fitted, root := tmp_path / "logs")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, err = run_fit([*tiny(root, epochs=FITTED_EPOCHS), "--ckpt_path=last"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"lightsum: error: nothing left to train in {run / 'checkpoints' / 'last.ckpt'}: it trained {FITTED_EPOCHS} epochs "
        f"and --trainer.max_epochs is {FITTED_EPOCHS}: raise it to train further (the learning-rate schedule resumes "
        "as saved, and a cosine schedule climbs again past its T_max: for a longer schedule, start a new fit with both larger)"
    )
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_ckpt_path_hpc_takes_the_newest_hpc_checkpoint_that_loads(fitted, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    good = Path(fitted.trainer.log_dir) / "checkpoints" / "last.ckpt"
    root = tmp_path / "root"
    root.mkdir()
    hostile(good, evil := root / "hpc_ckpt_2.ckpt", marker := tmp_path / "marker")
    args = [*tiny(tmp_path / "logs", epochs=FITTED_EPOCHS + 1), f"--trainer.default_root_dir={root}", "--ckpt_path=hpc"]
    code, err = run_fit(args, capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith(
        f"lightsum: error: no checkpoint in {root} loads (checkpoint {evil} holds"
    )
    shutil.copy(good, older := root / "hpc_ckpt_1.ckpt")
    os.utime(older, (1, 1))
    code, err = run_fit(args, capsys)
    assert code == 0 and f"lightsum: skipped {evil}: " in err
    assert not marker.exists()
    (last,) = (tmp_path / "logs").glob("default/version_*/checkpoints/last.ckpt")
    assert read_checkpoint(last)["epoch"] == FITTED_EPOCHS  # one more epoch after the hpc checkpoint's


def test_lightsum_debug_shows_the_traceback_instead_of_the_line(tmp_path: Path, monkeypatch) -> None:
    torch.save({"state_dict": {}, "payload": Evil()}, evil := tmp_path / "evil.ckpt")
    monkeypatch.setenv("LIGHTSUM_DEBUG", "1")
    with pytest.raises(ValueError, match=f"checkpoint {evil} holds a pickled print"):
        main(["test", *tiny(tmp_path / "logs"), f"--ckpt_path={evil}"])


def test_resume_without_a_logger_takes_the_checkpoint_folder_of_the_root(fitted, tmp_path: Path, capsys) -> None:
    shutil.copytree(Path(fitted.trainer.log_dir) / "checkpoints", tmp_path / "checkpoints")
    args = [
        *tiny(tmp_path / "logs", epochs=FITTED_EPOCHS + 1),
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--best_checkpoint.monitor=val/min_recall",
    ]
    code, err = run_fit([*args, "--ckpt_path=last"], capsys)
    assert code == 0, err
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["epoch"] == FITTED_EPOCHS


def test_a_resumed_run_keeps_its_model(fitted, tmp_path: Path, capsys) -> None:
    run = copied_run(fitted, root := tmp_path / "logs")
    code, err = run_fit([*tiny(root, epochs=FITTED_EPOCHS + 1), "--model.hidden_size=16", "--ckpt_path=last"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"lightsum: error: {run / 'checkpoints' / 'last.ckpt'} was trained with model.hidden_size=8 (the command says 16): "
        "a resumed run keeps its model; drop those options, or start a new run without --ckpt_path"
    )


def test_a_strategy_with_its_own_checkpoint_reader_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    # As FSDP and DeepSpeed do (they need GPUs): a strategy that overrides load_checkpoint.
    (tmp_path / "own_reader.py").write_text(
        "from pytorch_lightning.strategies import SingleDeviceStrategy\n\n"
        "class OwnReader(SingleDeviceStrategy):\n"
        "    def load_checkpoint(self, checkpoint_path, weights_only=None):\n"
        "        raise AssertionError('never called')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LIGHTSUM_ALLOW_IMPORTS", "own_reader")
    strategy = '{"class_path": "own_reader.OwnReader", "init_args": {"device": "cpu"}}'
    code, err = run_fit([*tiny(tmp_path / "logs"), f"--trainer.strategy={strategy}"], capsys)
    assert code == 2
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("lightsum: error: trainer.strategy: OwnReader reads checkpoints its own way")
    )
