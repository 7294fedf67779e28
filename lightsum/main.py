"""Command-line entry point: ``python -m lightsum`` and the ``lightsum`` script."""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from lightsum.callbacks import EvaluationFigures, HparamsSession
from lightsum.checkpointing import RandomStates
from lightsum.data import SumDataModule
from lightsum.model import SumClassifier
from lightsum.predict_io import PredictionCSV, check_sequences, check_target, prediction_target
from lightsum.run_folders import resume_in_latest_version, slurm_job_id, stable_slurm_run

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
_SUBCOMMANDS = ("fit", "validate", "test", "predict")
_DESCRIPTION = (
    "Train and evaluate digit-sum classifiers on imbalanced data. One more subcommand, not listed "
    "below: `lightsum report RUN_DIR ...` draws figures and a comparison table of runs "
    "(`lightsum report --help`)."
)


class OneLineErrorParser(LightningArgumentParser):
    """jsonargparse's parser, with a bad argument reported on one line (no usage block)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("LIGHTSUM_DEBUG"):
            super().error(message, ex)
        text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
        sys.stderr.write(f"lightsum: error: {text} (see --help)\n")
        self.exit(2)


class SumCLI(LightningCLI):
    """LightningCLI with linked data/model arguments, the two checkpoint callbacks, TensorBoard
    figures, the predictions writer, early checks of a given checkpoint, and run folders that a
    resumed or requeued fit continues."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The model must read sequences the way the data module serves them.
        parser.link_arguments("data.seq_len", "model.seq_len")
        parser.link_arguments("data.layout", "model.layout")
        # The loader groups the batches the model then steps through.
        parser.link_arguments("data.steps_per_execution", "model.steps_per_execution")
        # Best checkpoint by the headline metric; a separate every-epoch last.ckpt for resuming
        # (a monitored ModelCheckpoint only refreshes last.ckpt when the monitor improves).
        parser.add_lightning_class_args(ModelCheckpoint, "best_checkpoint")
        parser.set_defaults({
            "best_checkpoint.monitor": "val/min_recall",
            "best_checkpoint.mode": "max",
            "best_checkpoint.filename": "best-{epoch:03d}",
        })
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults({"last_checkpoint.filename": "last", "last_checkpoint.enable_version_counter": False})
        # Confusion matrix and PR curves in TensorBoard (--figures.every_n_epochs 0: off).
        parser.add_lightning_class_args(EvaluationFigures, "figures")
        # Where `predict` writes its CSV (--predictions.path).
        parser.add_lightning_class_args(PredictionCSV, "predictions")

    def _active_config(self) -> Any:
        """The parsed config of the running subcommand (the whole config with ``run=False``)."""
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # Checked here because LightningCLI reads the checkpoint's hyperparameters right after parsing.
        config = self._active_config()
        ckpt_path = config.get("ckpt_path")
        if ckpt_path not in (None, "last", "best", "hpc"):
            check_checkpoint(ckpt_path)
            check_data_fits_checkpoint(ckpt_path, config.data)

    def before_instantiate_classes(self) -> None:
        config = self._active_config()
        if config.trainer.get("enable_progress_bar") is False and config.trainer.get("callbacks"):
            # The default config's progress-bar callback would contradict enable_progress_bar=false.
            config.trainer.callbacks = [
                c for c in config.trainer.callbacks if not str(c.get("class_path", "")).endswith("ProgressBar")
            ]
        steps = config.data.get("steps_per_execution", 1)
        if steps > 1 and (config.trainer.get("gradient_clip_val") or (config.trainer.get("accumulate_grad_batches") or 1) > 1):
            raise ValueError(
                f"data.steps_per_execution={steps} steps the optimizer by hand, where Lightning neither clips "
                "nor accumulates gradients: use --data.steps_per_execution 1 with trainer.gradient_clip_val "
                "or trainer.accumulate_grad_batches"
            )
        if self.subcommand == "predict":
            check_predict_files(config)
        job_id = slurm_job_id()
        if self.subcommand == "fit" and job_id is not None:
            stable_slurm_run(config, job_id)
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            resume_in_latest_version(config)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = super().instantiate_trainer(**kwargs)
        # Lightning calls every hook of every callback at every step (~4 us each here): keep only
        # the callbacks this subcommand uses.
        unused = [c for c in trainer.callbacks if isinstance(c, PredictionCSV) and self.subcommand != "predict"]
        unused += [c for c in trainer.callbacks if isinstance(c, EvaluationFigures) and not c.every_n_epochs]
        trainer.callbacks = [c for c in trainer.callbacks if c not in unused]
        return trainer


def check_checkpoint(path: str) -> None:
    """Fail early, in one line, on a missing or unreadable checkpoint."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint is corrupt or not a torch checkpoint: {path}")
    with zipfile.ZipFile(path) as archive:
        if archive.testzip() is not None:
            raise ValueError(f"checkpoint is corrupt (bad CRC): {path}")


def check_data_fits_checkpoint(path: str, data: Any) -> None:
    """Refuse data the checkpoint's model was not built for.

    The CLI links data.seq_len and data.layout into the model, so a mismatch would otherwise build
    a model of another shape; in the sequence layout its weights even load, and it would silently
    score sequences of a length it never saw.
    """
    hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    for key in ("seq_len", "layout"):
        if key in hparams and data.get(key) is not None and hparams[key] != data[key]:
            raise ValueError(
                f"the checkpoint's model reads {key}={hparams[key]!r} but data.{key} is {data[key]!r}: "
                f"use --data.{key} {hparams[key]} with {path}"
            )


def check_predict_files(config: Any) -> None:
    """Refuse a bad output path or input file of ``predict`` before the trainer is built: the
    trainer's logger creates a run folder as soon as predicting starts. The input is read and
    checked in full once; the data module then takes the sequences read here."""
    source = config.data.get("predict_path")
    target = prediction_target(config.predictions.get("path"), source)
    if target is not None:
        check_target(target, source)
    if source:
        check_sequences(source, config.data.seq_len)


def build_cli(args: list[str] | None = None, run: bool = True) -> SumCLI:
    """The lightsum CLI exactly as ``main`` builds it; ``run=False`` parses and instantiates only.

    Args:
        args: command-line arguments (a subcommand first when ``run``); ``None`` reads ``sys.argv``.
        run: run the subcommand; False gives ``cli.model``, ``cli.datamodule`` and ``cli.trainer``
            ready for a benchmark to drive.
    """
    default = {"default_config_files": [str(DEFAULT_CONFIG)]}
    return SumCLI(
        SumClassifier,
        SumDataModule,
        args=args,
        run=run,
        trainer_defaults={"callbacks": [HparamsSession(), RandomStates()]},
        parser_class=OneLineErrorParser,
        # The packaged default applies first; any --config stacks on top of it.
        parser_kwargs={**{cmd: default for cmd in _SUBCOMMANDS}, "description": _DESCRIPTION} if run else default,
        # A requeued or repeated run writes config.yaml again into the same folder.
        save_config_kwargs={"overwrite": True},
    )


def main(args: list[str] | None = None) -> SumCLI | None:
    """Run the CLI (``fit``, ``validate``, ``test``, ``predict``, ``report``); exit 2 on bad input.

    Args:
        args: command-line arguments; ``None`` reads ``sys.argv``.
    """
    argv = sys.argv[1:] if args is None else args
    try:
        if argv[:1] == ["report"]:  # not a Trainer method, so not a LightningCLI subcommand
            from lightsum.report import report_main

            report_main(argv[1:])
            return None
        return build_cli(args)
    except (ValueError, FileNotFoundError, MisconfigurationException) as err:
        # MisconfigurationException: Lightning's own check of a trainer setting combination.
        if os.environ.get("LIGHTSUM_DEBUG"):
            raise
        print(f"lightsum: error: {err}", file=sys.stderr)
        sys.exit(2)
