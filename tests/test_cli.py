"""The real CLI over every config: fit, TensorBoard contents, checkpoints, resume, test, errors."""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, REPO, lightsum_process, scalars, tiny, tiny_files, toy_sequences, write_sequences
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

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

    def data_init_args(key: str) -> str:  # the data is a subclass group: its keys live under init_args
        return (
            key
            if not key.startswith("data.") or key.startswith(("data.class_path", "data.init_args."))
            else ("data.init_args." + key[len("data.") :])
        )

    resolved = leaves(printed)
    for key, value in leaves(yaml.safe_load(config.read_text())).items():
        assert resolved[data_init_args(key)] == value, key


# ddp.yaml makes Lightning relaunch the running command once per device, so it is fitted in a
# subprocess by tests/test_ddp.py instead of inside this pytest process.
SINGLE_PROCESS_CONFIGS = [c for c in CONFIGS if c.name != "ddp.yaml"]


@pytest.mark.parametrize("config", SINGLE_PROCESS_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_fits_and_logs(config: Path, run_root: Path, tmp_path: Path) -> None:
    if config.name == "files.yaml":  # needs a file: a small one of the toy sequences
        args = tiny_files(run_root, write_sequences(tmp_path / "train.csv", toy_sequences(300)), epochs=1)
    else:
        args = ["--config", str(config), *tiny(run_root, epochs=1)]
    cli = main(["fit", *args])
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
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cli = main(["fit", *tiny(run_root, epochs=1)])
    acc = EventAccumulator(cli.trainer.log_dir)
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    # Five metrics (the columns TensorBoard shows unasked), every model and data argument.
    assert [m.name.tag for m in experiment.metric_infos] == [
        "val/min_recall",
        "val/boundary_accuracy",
        "val/recall_0",
        "val/missed_0",
        "val/missed_1",
    ]
    names = {h.name for h in experiment.hparam_infos}
    assert {f"model.{k}" for k in cli.model.hparams if not k.startswith("_")} <= names
    assert {f"data.{k}" for k in cli.datamodule.hparams if not k.startswith("_")} <= names
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


def test_fit_ends_with_a_summary_and_test_scores_the_best_checkpoint_in_its_run(
    run_root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightsum.callbacks.figures import ConfusionMatrixPicture

    titles = []
    draw = ConfusionMatrixPicture.__call__
    monkeypatch.setattr(
        ConfusionMatrixPicture, "__call__", lambda self, m, title: titles.append(title) or draw(self, m, title)
    )
    cli = main(["fit", *tiny(run_root)])
    best = cli.trainer.checkpoint_callback.best_model_path
    run_dir = Path(cli.trainer.log_dir)
    summary = capsys.readouterr().out.split("lightsum: fit finished: ")[1].splitlines()
    epoch = int(Path(best).stem.split("=")[1])
    val = {tag: dict(points) for tag, points in scalars(run_dir).items()}
    step = next(s for s, e in scalars(run_dir)["epoch"] if e == epoch and s in val["val/min_recall"])
    assert summary[0].startswith(f"{run_dir} (2 validated epochs")
    assert summary[1] == f"  best checkpoint  {best}  (epoch {epoch}, by val/boundary_accuracy)"
    assert f"min_recall {val['val/min_recall'][step]:.5f}" in summary[2]
    assert f"boundary_accuracy {val['val/boundary_accuracy'][step]:.5f}" in summary[2]
    # The best checkpoint is the first epoch with the highest boundary accuracy, as ModelCheckpoint keeps.
    by_epoch = [val["val/boundary_accuracy"][s] for s, _ in scalars(run_dir)["val/boundary_accuracy"]]
    assert epoch == by_epoch.index(max(by_epoch))
    assert f"decision threshold {val['val/decision_threshold'][step]:.4g}" in summary[2]
    assert summary[3].startswith(f"  last checkpoint  {run_dir / 'checkpoints' / 'last.ckpt'}")
    # The data options repeat (the test set depends on them), the others do not.
    data_options = [a.replace("=", " ", 1) for a in tiny(run_root) if a.startswith("--data.")]
    assert summary[5] == f"  python -m lightsum test {' '.join(data_options)} --ckpt_path {best}"

    # Without --ckpt_path, test scores that best checkpoint, says so, and logs into its run folder.
    test_cli = main(["test", *tiny(run_root)])
    assert f"lightsum: test uses {best}, the best checkpoint of the newest run" in capsys.readouterr().err
    assert sorted(p.name for p in run_root.glob("default/*")) == [run_dir.name]  # no run of its own
    assert titles[-1].startswith(f"test, epoch {epoch}, threshold")  # the checkpoint's epoch
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    acc.Reload()
    assert [i.step for i in acc.Images("test/confusion_matrix")] == [step]
    assert not (run_dir / "config.yaml").read_text().count("ckpt_path: " + best)  # fit's config kept
    metrics = test_cli.trainer.callback_metrics
    for name in (
        "test/recall_0",
        "test/recall_1",
        "test/min_recall",
        "test/accuracy",
        "test/auroc",
        "test/missed_0",
        "test/missed_1",
        "test/boundary_accuracy",  # on the test's own boundary set
        "test/average_precision_0",
        "test/average_precision_1",
        "test/balanced_accuracy",
    ):
        assert name in metrics
        assert scalars(run_dir)[name] == [(step, pytest.approx(float(metrics[name])))]  # beside its epoch's val point
    # The miss counts are the recalls' complements, in sequences.
    labels = test_cli.datamodule.test_set.labels
    assert float(metrics["test/missed_0"]) == round((1 - float(metrics["test/recall_0"])) * int((labels == 0).sum()))
    # Reloaded model gives the in-memory model's probabilities.
    model = SumClassifier.load_from_checkpoint(best)
    digits = torch.randint(0, 10, (64, 30), generator=torch.Generator().manual_seed(1))
    trained = cli.model
    trained.load_state_dict(torch.load(best, weights_only=False)["state_dict"])
    torch.testing.assert_close(model.predict_proba(digits), trained.predict_proba(digits))
    # test/accuracy equals the reloaded model's own accuracy on the same test set.
    dm = test_cli.datamodule
    preds = torch.as_tensor(model.predict(dm.test_set.x))
    accuracy = (preds == dm.test_set.labels.long()).float().mean()
    assert float(metrics["test/accuracy"]) == pytest.approx(float(accuracy), abs=1e-6)


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_evaluations_refuse_without_a_trained_model(
    command: str, run_root: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, *tiny(run_root)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lightsum: error: {command} scores a trained model, and there is no best-*.ckpt under "
        f"{run_root / 'default'}/*/checkpoints: run `lightsum fit` with the same --config first, or pass --ckpt_path PATH"
    )
    assert not run_root.exists()


def test_help_names_lightsum_and_opens_on_its_own_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: lightsum [options] fit")
    assert text.index("--model.hidden_size") < text.index("[--data CONFIG") < text.index("--trainer.max_epochs")
    assert text.index("\n  --model.hidden_size") < text.index("\n  --trainer.max_epochs")  # the option lists too


def test_notices_users_cannot_act_on_are_silenced(run_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    import pytorch_lightning as pl

    caplog.set_level("INFO")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", *tiny(run_root, epochs=1)])
        through_cli, logged_through_cli = [str(w.message) for w in caught], [r.getMessage() for r in caplog.records]
        caught.clear()
        caplog.clear()
        pl.Trainer(logger=False, enable_progress_bar=False, max_epochs=1, enable_checkpointing=False).fit(
            cli_free_model(), datamodule=cli_free_data()
        )
        without, logged_without = [str(w.message) for w in caught], [r.getMessage() for r in caplog.records]
    assert any("GPU available" in m for m in logged_through_cli)  # Lightning's information stays
    assert any(m.startswith("💡") for m in logged_without) and not any(m.startswith("💡") for m in logged_through_cli)
    assert any("LeafSpec" in m for m in without) and not any("LeafSpec" in m for m in through_cli)


def cli_free_model():
    class Model(SumClassifier):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Model(hidden_size=4)


def cli_free_data():
    from lightsum import SumDataModule

    return SumDataModule(num_samples=600, test_samples=500)


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
    (["--data.num_samples=10000000000"], "GB of memory to generate and serve"),  # the machine's limits
    (["--ckpt_path=/nonexistent/x.ckpt"], "checkpoint not found: /nonexistent/x.ckpt"),  # checkpoints
]


@pytest.mark.parametrize(("args", "named"), BAD_VALUES, ids=lambda v: str(v))
def test_bad_values_give_one_clear_error(
    args: list[str], named: str, run_root: Path, capsys: pytest.CaptureFixture
) -> None:
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
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == f"lightsum: error: checkpoint is corrupt or not a torch checkpoint: {bad}"
    )


def test_malformed_config_file(tmp_path: Path, run_root: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hidden_size: [unclosed\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad), *tiny(run_root)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "lightsum: error: Problems parsing config: while parsing a flow sequence"
    )


# --- configs are code: only allowed imports, bounded YAML aliases ---------------------------------------


def refused(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one error line of ``lightsum fit ARGS``, which must exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("lightsum: error: ")
    return line


@pytest.mark.parametrize(
    "config",
    [
        "trainer:\n  callbacks:\n    - class_path: os.system\n      init_args:\n        command: touch {marker}\n",
        "lr_scheduler:\n  class_path: torch.optim.lr_scheduler.LambdaLR\n  init_args:\n    lr_lambda: os.system\n",
        "trainer:\n  callbacks:\n    - class_path: subprocess.Popen\n      init_args:\n        args: [touch, {marker}]\n",
    ],
)
def test_configs_may_not_import_what_the_allow_list_does_not_name(
    config: str, tmp_path: Path, run_root: Path, capsys: pytest.CaptureFixture
) -> None:
    (path := tmp_path / "evil.yaml").write_text(config.format(marker=tmp_path / "marker"))
    line = refused(["--config", str(path), *tiny(run_root)], capsys)
    assert re.search(
        r"configs may not name (os\.system|subprocess\.Popen): lightsum's configs import only torch.optim, ", line
    )
    assert "LIGHTSUM_ALLOW_IMPORTS" in line
    assert not (tmp_path / "marker").exists() and not run_root.exists()


def test_the_allow_list_widens_through_the_environment_only(
    tmp_path: Path, run_root: Path, monkeypatch, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "my_callbacks.py").write_text("import pytorch_lightning as pl\n\nclass Mine(pl.Callback):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    args = [*tiny(run_root), '--trainer.callbacks=[{"class_path": "my_callbacks.Mine"}]', "--print_config"]
    assert "configs may not name my_callbacks.Mine" in refused(args, capsys)
    monkeypatch.setenv("LIGHTSUM_ALLOW_IMPORTS", "my_callbacks")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    assert exit_info.value.code == 0 and "class_path: my_callbacks.Mine" in capsys.readouterr().out


def test_a_billion_laughs_config_is_refused_without_expanding_it(
    tmp_path: Path, run_root: Path, capsys: pytest.CaptureFixture
) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]  # 9^9 strings once expanded
    (path := tmp_path / "laughs.yaml").write_text("\n".join(lines) + "\n")
    assert len(path.read_bytes()) < 1500
    line = refused(["--config", str(path), *tiny(run_root)], capsys)
    assert (
        line
        == "lightsum: error: a config expands to more than 100000 YAML nodes through its aliases (&name / *name): refused"
    )


@pytest.mark.slow  # a real fit: the system tier (the fast tier stays under a minute)
@pytest.mark.parametrize(("value", "batches"), [("1", 1), ("1.0", 3)])
def test_an_integer_batch_limit_is_a_number_of_batches_and_a_float_a_fraction(
    value: str, batches: int, run_root: Path
) -> None:
    # tiny(): 480 training sequences, 3 batches of 200
    cli = main(["fit", *tiny(run_root, epochs=1), f"--trainer.limit_train_batches={value}", "--data.batch_size=200"])
    assert cli.trainer.num_training_batches == batches and cli.trainer.global_step == batches


@pytest.mark.slow  # a real fit: the system tier (the fast tier stays under a minute)
@pytest.mark.parametrize("in_allocation", [False, True])
def test_the_srun_notice_shows_inside_a_slurm_allocation_only(
    in_allocation: bool, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture
) -> None:
    (srun := tmp_path / "srun").write_text("#!/bin/sh\n")  # SLURM installed: an srun on PATH
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    if in_allocation:
        monkeypatch.setenv("SLURM_JOB_ID", "12")  # an sbatch script that runs python without srun
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(
            [
                "fit",
                *tiny(tmp_path / "logs", epochs=1),
                "--trainer.limit_train_batches=1",
                "--trainer.limit_val_batches=1",
            ]
        )
    shown = [w for w in caught if "The `srun` command is available" in str(w.message)]
    assert bool(shown) == in_allocation


@pytest.mark.parametrize("option", ["--data.predict_path=docs/examples/sequences.csv", "--predictions.path=out.csv"])
def test_an_option_only_predict_reads_is_refused_elsewhere(
    option: str, run_root: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny(run_root), option])
    assert exit_info.value.code == 2 and not run_root.exists()
    key, value = option[2:].split("=")
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lightsum: error: --{key} is read by predict only, and fit ignores it: drop it, or run `lightsum predict --{key} {value}`"
    )


def test_from_a_shared_config_file_it_is_a_note(tmp_path: Path, run_root: Path, capsys: pytest.CaptureFixture) -> None:
    (shared := tmp_path / "shared.yaml").write_text("data:\n  predict_path: docs/examples/sequences.csv\n")
    main(["fit", "--config", str(shared), *tiny(run_root, epochs=1), "--trainer.limit_train_batches=1"])
    assert (
        "lightsum: --data.predict_path is read by predict only, and fit ignores it (it comes from a config file)"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("source", "option"), [("SumDataModule", "--data.boundary_share"), ("SequenceFiles", "--data.train_path")]
)
def test_each_data_source_lists_its_options(source: str, option: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--data.help", source])
    assert option in capsys.readouterr().out
