"""The command line: ``python -m lightsum`` and the ``lightsum`` script, built on LightningCLI."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NoReturn

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.strategies import Strategy

from lightsum.atomic import AtomicCheckpointIO
from lightsum.callbacks import EvaluationFigures, HparamsSession, PredictionCSV, Preemption, RandomStates, TrainLoss
from lightsum.callbacks.predictions import check_target, prediction_target
from lightsum.callbacks.preemption import stop_at_once
from lightsum.checkpoints import newest_loadable, nothing_left_to_train, read_checkpoint
from lightsum.classifier import SumClassifier
from lightsum.config_policy import ALLOW_ENV, ALLOWED_IMPORTS, config_policy
from lightsum.data import SequenceDataModule, SumDataModule
from lightsum.data.sequences import check_fits
from lightsum.errors import OneLineParserErrors, debugging, fail, note, one_line_errors
from lightsum.events import EventWriteErrors
from lightsum.folders import check_run_folder
from lightsum.run_folders import (
    checkpoint_to_evaluate,
    log_into_run_of,
    resume_in_latest_version,
    slurm_job_id,
    stable_slurm_run,
)

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
_SUBCOMMANDS = ("fit", "validate", "test", "predict")
_EVALUATING = ("validate", "test", "predict")
_BATCH_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")
_DESCRIPTION = (
    "Train and evaluate sequence classifiers on imbalanced data: generated digit sums (the default, "
    "--data.help SumDataModule) or your own files (--config configs/files.yaml, --data.help SequenceFiles). "
    "lightsum's own options, --model.* and --data.*, are listed first in each subcommand's --help. "
    "validate, test and predict score "
    "--ckpt_path, by default the best checkpoint of the newest run of the config's name. Two more "
    "subcommands: `lightsum report RUN_DIR ...` draws figures and a comparison table of runs "
    "(`lightsum report --help`); `lightsum sweep GRID` runs strategies x seeds and tabulates them "
    "(`lightsum sweep --help`)."
)
# Notices a lightsum user cannot act on, silenced in the entry point (never at import).
_NOISE_WARNINGS = (
    # lightsum's epoch values are global already (torchmetrics syncs on compute, scores are
    # gathered): Lightning's advice to add sync_dist=True would average identical numbers again.
    r"It is recommended to use `self.log\('(train|val|test)/",
    r".*isinstance\(treespec, LeafSpec\)",  # Lightning's use of a torch deprecation
    r"The dirpath has changed from",  # a checkpoint evaluated from another run folder
    r"Checkpoint directory .* exists and is not empty",  # lightsum continues a run folder on purpose
    r"\s*(``)?(ArgumentParser\.)?(skip_none|instantiate_classes|add_instantiator)",  # Lightning's use of jsonargparse
    r"\s*By default only one JsonargparseDeprecationWarning",
    r"LightningCLI's args parameter",
)
_NOISE_LOGS = ("💡 Tip:",)  # Lightning's advertisements for its cloud services


class SumParser(OneLineParserErrors, LightningArgumentParser):
    """LightningCLI's parser, with a bad argument reported on one line."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        denied = re.search(r"Importing '([\w.]+)' is not allowed", message)
        if denied and getattr(self, "exit_on_error", True) and not debugging():
            key = re.match(r'Parser key "([^"]+)"', message)
            fail(
                f"{key[1] + ': ' if key else ''}configs may not name {denied[1]}: lightsum's configs import only "
                f"{', '.join(ALLOWED_IMPORTS)} ({ALLOW_ENV}=a.module,b.module allows more; see docs/configs.md)"
            )
        # The data is a subclass group: jsonargparse reports a bad data option as a failed Union of
        # every subtype; the one line names the option and what is wrong with it instead.
        inner = re.search(
            r"Problem with given class_path '([\w.]+)':\s*(.*?)\s*(?:- Expected a <class 'NoneType'>|$)", message, re.S
        )
        if message.startswith('Parser key "data"') and inner:
            source = inner[1].rsplit(".", 1)[-1]
            option = re.sub(
                r"^Option '(\w+)' is not accepted",
                rf"data.\1 is not an option of {source} (--data.help {source} lists them)",
                inner[2],
            )
            message = re.sub(r'^Parser key "(?!data\.)', 'Parser key "data.', " ".join(option.split()))
        super().error(message, ex)


class SumCLI(LightningCLI):
    """LightningCLI with lightsum's options first, linked data/model arguments, the two checkpoint
    callbacks, TensorBoard figures, the predictions writer, the checkpoint that evaluations score,
    run folders that a resumed or requeued fit continues, and a summary at the end of ``fit``."""

    def __init__(self, *args: Any, only: Sequence[str] = _SUBCOMMANDS, **kwargs: Any) -> None:
        self.only = only
        self.command_line = sys.argv[1:] if kwargs.get("args") is None else list(kwargs["args"])
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in self.only}

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # As LightningCLI's own, but model and data first: their options open each --help, ahead of
        # the Trainer's ~500 lines.
        parser.add_lightning_class_args(SumClassifier, "model")
        # Two sources: digit sums by default (configs list their keys without a class_path), users'
        # files with `class_path: lightsum.data.SequenceFiles` (configs/files.yaml).
        parser.add_lightning_class_args(SequenceDataModule, "data", subclass_mode=True, required=False)
        parser.set_defaults({"data": {"class_path": f"{SumDataModule.__module__}.{SumDataModule.__name__}"}})
        # As add_lightning_class_args(trainer), but with the limit_*_batches typed int first: Lightning
        # reads an int as a number of batches and a float as a fraction, and its Optional[Union[int,
        # float]] reaches the parser as Union[float, int] (typing caches a union under the order it was
        # first written in), so `--trainer.limit_train_batches 1` became 1.0: every batch.
        parser.add_class_arguments(
            self.trainer_class,
            "trainer",
            fail_untyped=False,
            instantiate=False,
            sub_configs=True,
            skip=set(_BATCH_LIMITS),
        )
        for name in _BATCH_LIMITS:
            parser.add_argument(
                f"--trainer.{name}",
                type=int | float | None,
                default=None,
                help=f"{name.split('_')[1]} batches per epoch (an int) or the fraction of them to use "
                "(a float; 1.0, the default, is all)",
            )
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The model must read sequences the way the data module serves them: what a step is (the
        # digits' count and layout, or the schema measured on a training file), and the training
        # classes its loss may weigh by.
        for target, value in LINKED.items():
            parser.link_arguments("data", f"model.{target}", compute_fn=value, apply_on="instantiate")
        # Best checkpoint by the headline metric; a separate every-epoch last.ckpt for resuming
        # (a monitored ModelCheckpoint only refreshes last.ckpt when the monitor improves).
        parser.add_lightning_class_args(ModelCheckpoint, "best_checkpoint")
        parser.set_defaults(
            {
                "best_checkpoint.monitor": "val/min_recall",
                "best_checkpoint.mode": "max",
                "best_checkpoint.filename": "best-{epoch:03d}",
            }
        )
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults({"last_checkpoint.filename": "last", "last_checkpoint.enable_version_counter": False})
        # Confusion matrix and PR curves in TensorBoard (--figures.every_n_epochs 0: off).
        parser.add_lightning_class_args(EvaluationFigures, "figures")
        # Where `predict` writes its CSV (--predictions.path).
        parser.add_lightning_class_args(PredictionCSV, "predictions")
        parser.add_argument(
            "--lr_interval",
            type=Literal["epoch", "step"],
            default="epoch",
            help="when lr_scheduler steps: after every epoch (its T_max counts epochs), or after every optimizer "
            "step (T_max counts steps: a schedule over a --trainer.max_steps budget, the same whatever an "
            "epoch's length)",
        )

    def configure_optimizers(
        self, lightning_module: Any, optimizer: Any, lr_scheduler: Any | None = None
    ) -> Any:  # a method, not LightningCLI's staticmethod: it reads --lr_interval
        if self.active_config().get("lr_interval") != "step":
            return LightningCLI.configure_optimizers(lightning_module, optimizer, lr_scheduler)
        if lr_scheduler is None or isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ValueError(
                "--lr_interval step steps an lr_scheduler after every optimizer step: "
                + ("there is none" if lr_scheduler is None else "ReduceLROnPlateau steps on a monitored metric")
                + "; drop --lr_interval or give a schedule (--lr_scheduler CosineAnnealingLR)"
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}

    def active_config(self) -> Any:
        """The parsed config of the running subcommand (the whole config with ``run=False``)."""
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # Here because LightningCLI reads the checkpoint's hyperparameters right after parsing.
        config, subcommand = self.active_config(), self.config.get("subcommand")
        if subcommand in _EVALUATING:
            config.ckpt_path, chosen = checkpoint_to_evaluate(config, subcommand)
            if chosen:
                note(chosen)
        if config.get("weights_only") is False:
            raise ValueError(
                "--weights_only false: lightsum reads every checkpoint weights-only, so that nothing "
                "in a checkpoint runs; a checkpoint that needs more is refused"
            )
        ckpt_path = config.get("ckpt_path")
        if ckpt_path not in (None, "last", "best", "hpc"):
            adopt_checkpoint_data(config, ckpt_path)

    def before_instantiate_classes(self) -> None:
        config = self.active_config()
        self.refuse_unused_options(config)
        if (
            self.subcommand == "fit"
            and config.best_checkpoint.monitor == "val/boundary_accuracy"
            and not data_args(config).get("boundary_per_sum")
        ):
            raise ValueError(
                "best_checkpoint.monitor is val/boundary_accuracy, which only digit sums with data.boundary_per_sum > 0 "
                "have: use --best_checkpoint.monitor val/min_recall"
            )
        if config.trainer.get("enable_progress_bar") is False and config.trainer.get("callbacks"):
            # The default config's progress-bar callback would contradict enable_progress_bar=false.
            config.trainer.callbacks = [
                c for c in config.trainer.callbacks if not str(c.get("class_path", "")).endswith("ProgressBar")
            ]
        if self.subcommand in ("validate", "test"):
            log_into_run_of(config, config.ckpt_path)  # metrics beside the training curves they score
        if self.subcommand == "predict":
            config.trainer.logger = False  # predictions are a file, not a TensorBoard run
            if config.get("return_predictions") is None:  # rows go to the CSV as they come: memory bounded
                config.return_predictions = False
        self.settle_checkpoint(config)
        # Before anything is computed: where the run logs, and where predict writes.
        check_run_folder(config, self.subcommand)
        target = prediction_target(config.predictions.get("path"), data_args(config).get("predict_path"))
        if self.subcommand == "predict" and target is not None:
            check_target(
                target,
                {
                    "the input file": data_args(config).get("predict_path"),
                    "the checkpoint": config.get("ckpt_path"),
                    "the config file": [
                        *(self.config.get("config") or []),
                        *(config.get("config") or []),
                        config.get("__default_config__"),
                    ],
                },
            )

    def settle_checkpoint(self, config: Any) -> None:
        """Resolve ``--ckpt_path`` (``last``, ``hpc``, a requeued SLURM job's) to the newest checkpoint
        that loads, and refuse a fit with nothing left to train."""
        job_id = slurm_job_id()
        if self.subcommand == "fit" and job_id is not None:
            stable_slurm_run(config, job_id)
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            resume_in_latest_version(config)
        if config.get("ckpt_path") == "hpc":  # Lightning's pre-emption checkpoints, in the trainer's root folder
            folder = Path(config.trainer.get("default_root_dir") or ".")
            config.ckpt_path = str(newest_loadable(folder.glob("hpc_ckpt_*.ckpt"), str(folder)))
            if self.subcommand != "fit":  # fit's own check below adopts it
                adopt_checkpoint_data(config, config.ckpt_path)
        if self.subcommand == "fit" and config.get("ckpt_path") not in (None, "last", "best", "hpc"):
            path, trainer = config.ckpt_path, config.trainer
            checkpoint = read_checkpoint(path)
            done = nothing_left_to_train(checkpoint, trainer.get("max_epochs"), trainer.get("max_steps", -1))
            if done:
                raise ValueError(f"nothing left to train in {path}: {done}")
            # A resumed run keeps its model: options that would build another one are refused here,
            # where Lightning's strict weight loading would stop with a traceback.
            hparams = checkpoint["hyper_parameters"]
            adopt_checkpoint_data(config, path, hparams)
            differ = [
                f"model.{k}={v!r} (the command says {config.model[k]!r})"
                for k, v in hparams.items()
                if not k.startswith("_") and k not in LINKED and k in config.model and config.model[k] != v
            ]
            if differ:
                raise ValueError(
                    f"{path} was trained with {', '.join(differ)}: a resumed run keeps its model; "
                    "drop those options, or start a new run without --ckpt_path"
                )

    def refuse_unused_options(self, config: Any) -> None:
        """Options only ``predict`` reads, given to another subcommand: refused when typed on the command
        line (the user meant something by them), a note when they come from a config file that
        ``predict`` shares with the other subcommands."""
        if self.subcommand == "predict":
            return
        for key, value in (
            ("data.predict_path", data_args(config).get("predict_path")),
            ("predictions.path", config.predictions.get("path")),
        ):
            if value is None:
                continue
            said = f"--{key} is read by predict only, and {self.subcommand} ignores it"
            if any(arg == f"--{key}" or arg.startswith(f"--{key}=") for arg in self.command_line):
                raise ValueError(f"{said}: drop it, or run `lightsum predict --{key} {value}`")
            note(f"{said} (it comes from a config file)")

    def after_instantiate_classes(self) -> None:
        strategy = self.trainer.strategy
        if type(strategy).load_checkpoint is not Strategy.load_checkpoint:  # FSDP, DeepSpeed: their own unpicklers
            raise ValueError(
                f"trainer.strategy: {type(strategy).__name__} reads checkpoints its own way, past lightsum's "
                "weights-only reader: use ddp (lightsum's models fit on one device)"
            )
        if not isinstance(strategy.checkpoint_io, AtomicCheckpointIO):
            if type(strategy.checkpoint_io) is not TorchCheckpointIO:  # a plugin that reads checkpoints its own way
                raise ValueError(
                    f"trainer.plugins: {type(strategy.checkpoint_io).__name__} would read checkpoints "
                    "without lightsum's checks: use lightsum.atomic.AtomicCheckpointIO or a subclass"
                )
            strategy.checkpoint_io = AtomicCheckpointIO()  # every restore, weights-only and checked whole
        if self.subcommand == "predict":
            self.datamodule.load_predict_file()  # a bad file is refused before anything runs
        # Lightning calls every hook of every callback at every step: keep only those in use.
        self.trainer.callbacks = [
            c
            for c in self.trainer.callbacks
            if not (isinstance(c, PredictionCSV) and self.subcommand != "predict")
            and not (isinstance(c, EvaluationFigures) and not c.every_n_epochs)
        ]

    def after_fit(self) -> None:
        log_dir = self.trainer.log_dir  # every rank: under DDP it is a collective
        if self.trainer.is_global_zero and log_dir and self.trainer.checkpoint_callback is not None:
            from lightsum.report import fit_summary  # reads the run's event files

            print(
                fit_summary(Path(log_dir), self.trainer.checkpoint_callback, config_args(self.command_line)), flush=True
            )


def data_seq_len(data: SequenceDataModule) -> int | None:
    return data.hparams.get("seq_len")


def data_layout(data: SequenceDataModule) -> str:
    return data.hparams.get("layout", "sequence")


def data_schema(data: SequenceDataModule) -> dict[str, Any] | None:
    return data.schema()


def data_class_balance(data: SequenceDataModule) -> Any:
    return data.class_balance


# Model arguments the data module sets (linked by the CLI), each with what computes it from the data.
LINKED = {"seq_len": data_seq_len, "layout": data_layout, "schema": data_schema, "class_balance": data_class_balance}


def data_args(config: Any) -> Any:
    """The data module's arguments in a parsed config (``data.init_args``: the data is a subclass group)."""
    return config.data.get("init_args") or {}


def adopt_checkpoint_data(config: Any, path: str, hparams: dict[str, Any] | None = None) -> None:
    """The data must be read as the checkpoint's model reads it: digit sums of its ``seq_len`` and
    ``layout``, or files by its schema, which the files data module then takes from the checkpoint."""
    hparams = read_checkpoint(path)["hyper_parameters"] if hparams is None else hparams
    args, schema = data_args(config), hparams.get("schema")
    files = "schema" in args  # lightsum.data.SequenceFiles
    if schema is not None and not files:
        raise ValueError(f"{path} was trained on sequence files: evaluate it with --config configs/files.yaml")
    if schema is None and files:
        raise ValueError(f"{path} is a digit-sum model: evaluate it without SequenceFiles (configs/files.yaml)")
    if files:
        args.schema = schema
    else:
        check_fits(hparams, args, f" with {path}")


def config_args(argv: Sequence[str]) -> list[str]:
    """The arguments of a command line that say which data the run was on (``--config FILE`` and
    ``--data.*`` but ``--data.predict_path``), to repeat in the commands that follow it: a test
    split is only the same with the same data options."""
    out = []
    for i, arg in enumerate(argv):
        key, has_value = arg.split("=", 1)[0], "=" in arg
        if key in ("-c", "--config") or (key.startswith("--data.") and key != "--data.predict_path"):
            if has_value:
                out += [key if key != "-c" else "--config", arg.split("=", 1)[1]]
            elif i + 1 < len(argv):
                out += [key if key != "-c" else "--config", argv[i + 1]]
    return out


def build_cli(args: list[str] | None = None, run: bool = True) -> SumCLI:
    """The lightsum CLI exactly as ``main`` builds it; ``run=False`` parses and instantiates only.

    Args:
        args: command-line arguments (a subcommand first when ``run``); ``None`` reads ``sys.argv``.
        run: run the subcommand; False gives ``cli.model``, ``cli.datamodule`` and ``cli.trainer``
            ready for a benchmark to drive.
    """
    default = {"default_config_files": [str(DEFAULT_CONFIG)]}
    argv = sys.argv[1:] if args is None else list(args)
    # Each subcommand's parser reads the Trainer's whole signature, which takes a while on a small CPU:
    # build only the one asked for (all of them for `lightsum --help`).
    only = argv[:1] if argv[:1] and argv[0] in _SUBCOMMANDS else _SUBCOMMANDS
    return SumCLI(
        SumClassifier,
        SumDataModule,
        args=args,
        run=run,
        only=only,
        trainer_defaults={
            "callbacks": [EventWriteErrors(), HparamsSession(), RandomStates(), TrainLoss(), Preemption()]
        },
        parser_class=SumParser,
        parser_kwargs={**{cmd: default for cmd in only}, "description": _DESCRIPTION, "prog": "lightsum"}
        if run
        else default,
        # config.yaml records how a run was trained: fit writes it (again, into the same folder, for
        # a requeued or resumed run); evaluations leave it alone.
        save_config_callback=SaveConfigCallback if "fit" in only else None,
        save_config_kwargs={"overwrite": True},
    )


@contextmanager
def quiet_notices() -> Iterator[None]:
    """Filters the notices of ``_NOISE_WARNINGS`` and ``_NOISE_LOGS`` while the command runs."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOISE_LOGS)

    loggers = [
        logging.getLogger(name)
        for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")
    ]
    # Lightning's advice to launch with srun helps inside a SLURM allocation (an sbatch script or
    # salloc shell running python without srun, where several processes would hang), not on every
    # machine or login node that merely has SLURM installed, where lightsum runs locally as asked.
    srun_hint = (
        () if "SLURM_JOB_ID" in os.environ else (r"The `srun` command is available on your system but is not used",)
    )
    with warnings.catch_warnings():
        for message in (*_NOISE_WARNINGS, *srun_hint):
            warnings.filterwarnings("ignore", message=message)
        for logger in loggers:
            logger.addFilter(keep)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(keep)


def main(args: list[str] | None = None) -> SumCLI | None:
    """Run the CLI (``fit``, ``validate``, ``test``, ``predict``, ``report``, ``sweep``); exit 2 on bad input.

    Args:
        args: command-line arguments; ``None`` reads ``sys.argv``.
    """
    argv = sys.argv[1:] if args is None else args
    # Outside the trainer's loops (start-up, generating the data, the summary) a stop request stops
    # at once; Preemption takes over inside them.
    with one_line_errors(), quiet_notices(), config_policy(), stop_at_once():
        if argv[:1] == ["report"]:  # not a Trainer method, so not a LightningCLI subcommand
            from lightsum.report import report_main

            report_main(argv[1:])
            return None
        if argv[:1] == ["sweep"]:  # a launcher of fit + test trials, not a Trainer method
            from lightsum.sweep import sweep_main

            sweep_main(argv[1:])
            return None
        return build_cli(args)
