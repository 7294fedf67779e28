"""The real CLI over every config: fit, TensorBoard contents, checkpoints, resume, test, errors."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONFIGS, REPO, scalars, tiny
from lightsum import SumClassifier
from lightsum.main import DEFAULT_CONFIG, main


def test_configs_dir_holds_the_packaged_default() -> None:
    assert (REPO / "configs" / "default.yaml").read_bytes() == DEFAULT_CONFIG.read_bytes()
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
    cli = main(["fit", "--config", str(config), *tiny(run_root)])
    run_dir = Path(cli.trainer.log_dir)
    series = scalars(run_dir)
    steps = cli.trainer.global_step
    # One optimizer step per batch of data.batch_size (a loader item holds data.steps_per_execution of them).
    assert steps == 2 * math.ceil(len(cli.datamodule.epoch_sampler) / cli.datamodule.hparams.batch_size)
    # train/loss at every optimizer step, validation and train per-class recall every epoch.
    assert [s for s, _ in series["train/loss"]] == list(range(steps))
    for tag in ("val/recall_0", "val/recall_1", "val/min_recall", "val/auroc", "train/recall_0", "train/recall_1"):
        assert len(series[tag]) == 2, tag
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


BAD_VALUES = [
    # negative or zero sizes
    (["--data.num_samples=-3"], "num_samples"),
    (["--data.batch_size=0"], "batch_size"),
    (["--data.test_samples=-1"], "test_samples"),
    (["--model.hidden_size=-4"], "hidden_size"),
    (["--figures.every_n_epochs=-1"], "every_n_epochs"),
    # fractions outside their interval
    (["--data.val_fraction=1.5"], "val_fraction"),
    (["--data.val_fraction=0"], "val_fraction"),
    (["--data.sampling_ratio=0"], "sampling_ratio"),
    (["--data.sampling_ratio=1.5"], "sampling_ratio"),
    (["--model.dropout=1.0"], "dropout"),
    (["--model.decision_threshold=1.5"], "decision_threshold"),
    # a threshold no sequence can reach (or that every sequence reaches)
    (["--data.threshold=500"], "threshold"),
    (["--data.threshold=0"], "threshold"),
    # too few samples for the minority class to appear in a split (50 -> 10 validation sequences)
    (["--data.num_samples=50"], "holds no sequence of class 0"),
    (["--data.threshold=260"], "holds no sequence of class 1"),
    # unknown choices
    (["--data.sampling=sideways"], "sampling"),
    (["--data.train_distribution=skewed"], "train_distribution"),
    (["--model.pos_weight=heavy"], "pos_weight"),
    (["--data.layout=diagonal"], "layout"),
    (["--model.recurrent_activation=relu"], "recurrent_activation"),
    # checkpoints
    (["--ckpt_path=/nonexistent/x.ckpt"], "checkpoint not found"),
]


@pytest.mark.parametrize(("args", "named"), BAD_VALUES, ids=lambda v: str(v))
def test_bad_values_give_one_clear_error(args: list[str], named: str, run_root: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:  # any other exception would be a traceback
        main(["fit", *tiny(run_root), *args])
    assert exit_info.value.code != 0
    assert named in capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_value_in_a_real_process(run_root: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lightsum", "fit", *tiny(run_root), "--data.num_samples=50"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("lightsum: error: data: the validation split")


def test_corrupt_checkpoint_is_refused(run_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(b"not a checkpoint")
    proc = subprocess.run(
        [sys.executable, "-m", "lightsum", "test", *tiny(run_root), f"--ckpt_path={bad}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "corrupt" in proc.stderr.strip().splitlines()[-1]


def test_malformed_config_file(tmp_path: Path, run_root: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hidden_size: [unclosed\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lightsum", "fit", "--config", str(bad), *tiny(run_root)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
