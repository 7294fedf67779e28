"""The command line: ``python -m lightsum`` and the ``lightsum`` script, built on LightningCLI."""

from __future__ import annotations

import os
import sys
import warnings
import zipfile
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from lightsum.callbacks import EvaluationFigures, HparamsSession, PredictionCSV, RandomStates, TrainLoss
from lightsum.callbacks.predictions import check_target, prediction_target
from lightsum.classifier import SumClassifier
from lightsum.data import SumDataModule
from lightsum.data.sequences import check_fits
from lightsum.errors import OneLineParserErrors, one_line_errors
from lightsum.run_folders import resume_in_latest_version, slurm_job_id, stable_slurm_run

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
_SUBCOMMANDS = ("fit", "validate", "test", "predict")
_DESCRIPTION = (
    "Train and evaluate digit-sum classifiers on imbalanced data. One more subcommand, not listed "
    "below: `lightsum report RUN_DIR ...` draws figures and a comparison table of runs "
    "(`lightsum report --help`)."
)
# Lightning's advice to add sync_dist=True to epoch-level logging under DDP: lightsum's epoch values
# are global already (torchmetrics syncs on compute, scores are gathered), so it would only
# average identical numbers again.
_NOISE = (r"It is recommended to use `self.log\('(train|val|test)/",)


class SumParser(OneLineParserErrors, LightningArgumentParser):
    """LightningCLI's parser, with a bad argument reported on one line."""


class SumCLI(LightningCLI):
    """LightningCLI with linked data/model arguments, the two checkpoint callbacks, TensorBoard
    figures, the predictions writer, early checks of a given checkpoint and of predict's files,
    and run folders that a resumed or requeued fit continues."""

    def __init__(self, *args: Any, only: Sequence[str] = _SUBCOMMANDS, **kwargs: Any) -> None:
        self.only = only
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in self.only}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The model must read sequences the way the data module serves them.
        parser.link_arguments("data.seq_len", "model.seq_len")
        parser.link_arguments("data.layout", "model.layout")
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

    def active_config(self) -> Any:
        """The parsed config of the running subcommand (the whole config with ``run=False``)."""
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # Checked here because LightningCLI reads the checkpoint's hyperparameters right after parsing.
        config = self.active_config()
        ckpt_path = config.get("ckpt_path")
        if ckpt_path not in (None, "last", "best", "hpc"):
            check_checkpoint(ckpt_path)
            hparams = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
            check_fits(hparams, config.data, f" with {ckpt_path}")

    def before_instantiate_classes(self) -> None:
        config = self.active_config()
        if config.trainer.get("enable_progress_bar") is False and config.trainer.get("callbacks"):
            # The default config's progress-bar callback would contradict enable_progress_bar=false.
            config.trainer.callbacks = [
                c for c in config.trainer.callbacks if not str(c.get("class_path", "")).endswith("ProgressBar")
            ]
        if self.subcommand == "predict":  # before the trainer's logger makes a run folder
            target = prediction_target(config.predictions.get("path"), config.data.get("predict_path"))
            if target is not None:
                check_target(target, config.data.get("predict_path"))
        job_id = slurm_job_id()
        if self.subcommand == "fit" and job_id is not None:
            stable_slurm_run(config, job_id)
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            resume_in_latest_version(config)

    def after_instantiate_classes(self) -> None:
        if self.subcommand == "predict":
            self.datamodule.load_predict_file()  # a bad file is refused before any run folder exists
        # Lightning calls every hook of every callback at every step: keep only those in use.
        self.trainer.callbacks = [
            c for c in self.trainer.callbacks
            if not (isinstance(c, PredictionCSV) and self.subcommand != "predict")
            and not (isinstance(c, EvaluationFigures) and not c.every_n_epochs)
        ]


def check_checkpoint(path: str) -> None:
    """Fail early, in one line, on a missing or unreadable checkpoint."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint is corrupt or not a torch checkpoint: {path}")
    with zipfile.ZipFile(path) as archive:
        if archive.testzip() is not None:
            raise ValueError(f"checkpoint is corrupt (bad CRC): {path}")


def build_cli(args: list[str] | None = None, run: bool = True) -> SumCLI:
    """The lightsum CLI exactly as ``main`` builds it; ``run=False`` parses and instantiates only.

    Args:
        args: command-line arguments (a subcommand first when ``run``); ``None`` reads ``sys.argv``.
        run: run the subcommand; False gives ``cli.model``, ``cli.datamodule`` and ``cli.trainer``
            ready for a benchmark to drive.
    """
    default = {"default_config_files": [str(DEFAULT_CONFIG)]}
    argv = sys.argv[1:] if args is None else args
    # Each subcommand's parser reads the Trainer's whole signature (~0.3 s apiece on a small CPU):
    # build only the one asked for (all of them for `lightsum --help`).
    only = argv[:1] if argv[:1] and argv[0] in _SUBCOMMANDS else _SUBCOMMANDS
    return SumCLI(
        SumClassifier,
        SumDataModule,
        args=args,
        run=run,
        trainer_defaults={"callbacks": [HparamsSession(), RandomStates(), TrainLoss()]},
        parser_class=SumParser,
        # The packaged default applies first; any --config stacks on top of it.
        only=only,
        parser_kwargs={**{cmd: default for cmd in only}, "description": _DESCRIPTION} if run else default,
        # A requeued or repeated run writes config.yaml again into the same folder.
        save_config_kwargs={"overwrite": True},
    )


def main(args: list[str] | None = None) -> SumCLI | None:
    """Run the CLI (``fit``, ``validate``, ``test``, ``predict``, ``report``); exit 2 on bad input.

    Args:
        args: command-line arguments; ``None`` reads ``sys.argv``.
    """
    argv = sys.argv[1:] if args is None else args
    with one_line_errors(), warnings.catch_warnings():
        for message in _NOISE:
            warnings.filterwarnings("ignore", message=message)
        if argv[:1] == ["report"]:  # not a Trainer method, so not a LightningCLI subcommand
            from lightsum.report import report_main

            report_main(argv[1:])
            return None
        return build_cli(args)
