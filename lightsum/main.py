"""Command-line entry point: ``python -m lightsum`` and the ``lightsum`` script."""

from __future__ import annotations

import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from lightsum.callbacks import HparamsSession
from lightsum.data import SumDataModule
from lightsum.model import SumClassifier

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
_SUBCOMMANDS = ("fit", "validate", "test", "predict")


class SumCLI(LightningCLI):
    """LightningCLI with linked data/model arguments and the two checkpoint callbacks."""

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

    def _active_config(self) -> Any:
        """The parsed config of the running subcommand (the whole config with ``run=False``)."""
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # Checked here because LightningCLI reads the checkpoint's hyperparameters right after parsing.
        ckpt_path = self._active_config().get("ckpt_path")
        if ckpt_path not in (None, "last", "best", "hpc"):
            check_checkpoint(ckpt_path)

    def before_instantiate_classes(self) -> None:
        config = self._active_config()
        if config.trainer.get("enable_progress_bar") is False and config.trainer.get("callbacks"):
            # The default config's progress-bar callback would contradict enable_progress_bar=false.
            config.trainer.callbacks = [
                c for c in config.trainer.callbacks if not str(c.get("class_path", "")).endswith("ProgressBar")
            ]
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            resume_in_latest_version(config)


def check_checkpoint(path: str) -> None:
    """Fail early, in one line, on a missing or unreadable checkpoint."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint is corrupt or not a torch checkpoint: {path}")
    with zipfile.ZipFile(path) as archive:
        if archive.testzip() is not None:
            raise ValueError(f"checkpoint is corrupt (bad CRC): {path}")


def resume_in_latest_version(config: Any) -> None:
    """Point an unversioned TensorBoard logger at the newest run folder holding a last.ckpt.

    ``--ckpt_path last`` searches the checkpoint folder of *this* run; a fresh logger version would
    make that an empty folder. Reusing the version continues the same run folder and curves.
    """
    args = getattr(config.trainer.get("logger"), "init_args", None)
    if args is None or args.get("version") is not None:
        return
    root = Path(args.get("save_dir") or ".") / (args.get("name") or "")
    found = [
        int(m.group(1))
        for p in root.glob("version_*/checkpoints/last.ckpt")
        if (m := re.fullmatch(r"version_(\d+)", p.parent.parent.name))
    ]
    if found:
        args["version"] = max(found)


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
        trainer_defaults={"callbacks": [HparamsSession()]},
        # The packaged default applies first; any --config stacks on top of it.
        parser_kwargs={cmd: default for cmd in _SUBCOMMANDS} if run else default,
        # A requeued or repeated run writes config.yaml again into the same folder.
        save_config_kwargs={"overwrite": True},
    )


def main(args: list[str] | None = None) -> SumCLI | None:
    """Run the CLI (``fit``, ``validate``, ``test``, ``predict``) and exit 2 on bad input.

    Args:
        args: command-line arguments; ``None`` reads ``sys.argv``.
    """
    try:
        return build_cli(args)
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("LIGHTSUM_DEBUG"):
            raise
        print(f"lightsum: error: {err}", file=sys.stderr)
        sys.exit(2)
