"""The real CLI over every config: fit, TensorBoard contents, checkpoints, resume, test, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONFIGS, REPO, lightsum_process, scalars, tiny
from lightsum import SumClassifier
from lightsum.cli import DEFAULT_CONFIG, main


def test_configs_dir_links_to_the_one_packaged_default() -> None:
    link = REPO / "configs" / "default.yaml"
    assert link.is_symlink() and link.resolve() == DEFAULT_CONFIG.resolve()
    assert {p.name for p in CONFIGS} >= {"default.yaml", "seed.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_parses(config: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    # Every key a config sets must survive into the resolved config (no silently ignored key).
    def leaves(tree: dict | list, prefix: str = "") -> dict:
        out = {}
        items = tree.items() if isinstance(tree, dict) else enumerate(tree)
        for key, value in items:
            if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
                out.update(leaves(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out
    resolved = leaves(printed)
    for key, value in leaves(yaml.safe_load(config.read_text())).items():
        assert resolved[key] == value, key


# ddp.yaml makes Lightning relaunch the running command once per device, so it is fitted in a
# subprocess by tests/test_ddp.py instead of inside this pytest process.
SINGLE_PROCESS_CONFIGS = [c for c in CONFIGS if c.name != "ddp.yaml"]


@pytest.mark.parametrize("config", SINGLE_PROCESS_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_fits_and_logs(config: Path, run_root: Path) -> None:
    cli = main(["fit", "--config", str(config), *tiny(run_root, epochs=1)])
    run_dir = Path(cli.trainer.log_dir)
    series = scalars(run_dir)
    steps = cli.trainer.global_step
    # One optimizer step per batch of data.batch_size.
    assert steps == math.ceil(len(cli.datamodule.epoch_sampler) / cli.datamodule.hparams.batch_size)
    # train/loss at every optimizer step, validation and train per-class recall every epoch.
    assert [s for s, _ in series["train/loss"]] == list(range(steps))
    for tag in ("val/recall_0", "val/recall_1", "val/min_recall", "val/auroc", "train/recall_0", "train/recall_1"):
        assert len(series[tag]) == 1, tag
        assert all(0.0 <= v <= 1.0 for _, v in series[tag])
    ckpts = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    assert (run_dir / "config.yaml").is_file()


def test_hparams_tab_lists_val_metrics(run_root: Path) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli = main(["fit", *tiny(run_root, epochs=1)])
    acc = EventAccumulator(cli.trainer.log_dir)
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    tags = {m.name.tag for m in experiment.metric_infos}
    assert {"val/min_recall", "val/recall_0", "val/recall_1"} <= tags
    assert "hidden_size" in {h.name for h in experiment.hparam_infos}
    # No placeholder value at step 0 on the real curve.
    assert len(scalars(Path(cli.trainer.log_dir))["val/min_recall"]) == 1


def test_resume_from_last_continues_the_same_run(run_root: Path) -> None:
    first = main(["fit", *tiny(run_root, epochs=1)])
    run_dir = Path(first.trainer.log_dir)
    # Same command again with more epochs: the resolved config.yaml exists and must not crash it.
    second = main(["fit", *tiny(run_root, epochs=3), "--ckpt_path=last"])
    assert Path(second.trainer.log_dir) == run_dir
    assert second.trainer.current_epoch == 3
    steps = [s for s, _ in scalars(run_dir)["train/loss"]]
    assert steps == list(range(second.trainer.global_step))  # one continuous curve, no restart


def test_test_on_best_checkpoint_and_reload(run_root: Path) -> None:
    cli = main(["fit", *tiny(run_root)])
    best = cli.trainer.checkpoint_callback.best_model_path
    assert Path(best).name.startswith("best-")
    test_cli = main(["test", *tiny(run_root), f"--ckpt_path={best}"])
    metrics = test_cli.trainer.callback_metrics
    for name in ("test/recall_0", "test/recall_1", "test/min_recall", "test/accuracy", "test/auroc",
                 "test/average_precision", "test/balanced_accuracy"):
        assert name in metrics
    # Reloaded model gives the in-memory model's probabilities.
    model = SumClassifier.load_from_checkpoint(best)
    digits = torch.randint(0, 10, (64, 30), generator=torch.Generator().manual_seed(1))
    trained = cli.model
    trained.load_state_dict(torch.load(best, weights_only=False)["state_dict"])
    torch.testing.assert_close(model.predict_proba(digits), trained.predict_proba(digits))
    # test/accuracy equals the reloaded model's own accuracy on the same test set.
    dm = test_cli.datamodule
    preds = torch.as_tensor(model.predict(dm.test_set.digits))
    accuracy = (preds == dm.test_set.labels.long()).float().mean()
    assert float(metrics["test/accuracy"]) == pytest.approx(float(accuracy), abs=1e-6)


# One case per place a mistake is caught; every argument's own rule is tested beside its class
# (tests/test_classifier.py, test_datamodule.py): here, that each reaches the user as one line.
BAD_VALUES = [
    (["--data.sampling=sideways"], "data.sampling"),  # parsing: a choice
    (["--data.steps_per_execution=4"], "steps_per_execution"),  # parsing: an option that no longer exists
    (["--data.num_samples=-3"], "data.num_samples must be a positive integer, got -3"),  # the data module's rules
    (["--data.threshold=500"], "data.threshold=500 makes one class impossible"),
    (["--model.dropout=1.0"], "model.dropout must be in [0, 1), got 1.0"),  # the model's rules
    (["--figures.every_n_epochs=-1"], "figures.every_n_epochs must be >= 0"),  # a callback's rules
    (["--data.num_samples=50"], "holds no sequence of class 0"),  # data generation: a split too small
    (["--data.threshold=260"], "holds no sequence of class 1"),
    (["--ckpt_path=/nonexistent/x.ckpt"], "checkpoint not found: /nonexistent/x.ckpt"),  # checkpoints
]


@pytest.mark.parametrize(("args", "named"), BAD_VALUES, ids=lambda v: str(v))
def test_bad_values_give_one_clear_error(args: list[str], named: str, run_root: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:  # any other exception would be a traceback
        main(["fit", *tiny(run_root), *args])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("lightsum: error: ") and named in last


@pytest.mark.slow
def test_bad_value_in_a_real_process(run_root: Path) -> None:
    proc = lightsum_process("fit", *tiny(run_root), "--data.num_samples=50", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("lightsum: error: data: the validation split")


def test_corrupt_checkpoint_is_refused(run_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *tiny(run_root), f"--ckpt_path={bad}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"lightsum: error: checkpoint is corrupt or not a torch checkpoint: {bad}"


def test_malformed_config_file(tmp_path: Path, run_root: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hidden_size: [unclosed\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad), *tiny(run_root)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lightsum: error: Problems parsing config: while parsing a flow sequence")
