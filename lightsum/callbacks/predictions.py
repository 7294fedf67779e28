"""The ``predict`` writer: ``row,probability,label`` to a CSV file, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from lightsum.atomic import AtomicFile
from lightsum.run_folders import run_folder_of


def prediction_target(path: str | os.PathLike | None, source: str | os.PathLike | None) -> Path | None:
    """Where ``predict`` writes: ``path`` when given, else ``<input>.predictions.csv`` beside the
    input file ``source``; None for the generated test set (the run folder's ``predictions.csv``)."""
    if path is not None:
        return Path(path)
    return Path(source).with_suffix(".predictions.csv") if source else None


def check_target(target: Path, source: str | os.PathLike | None) -> None:
    """Refuse, before anything is predicted, an output the CSV cannot be renamed to.

    Raises:
        ValueError: ``target`` is a folder or the input file, or its folder cannot be made or written.
    """
    if target.is_dir():
        raise ValueError(f"predictions.path: {target} is a folder; name a file, e.g. {target / 'predictions.csv'}")
    if source and target.resolve() == Path(source).resolve():
        raise ValueError(f"predictions.path would overwrite the input file {source}")
    folder = target.absolute().parent
    existing = next(f for f in (folder, *folder.parents) if f.exists())
    if not existing.is_dir():
        raise ValueError(f"predictions.path: cannot write {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"predictions.path: cannot write {target}: no write permission in {existing}")


class PredictionCSV(BasePredictionWriter):
    """Writes ``predict`` results to a CSV file: ``row,probability,label`` (row: 0-based input position).

    Rows stream to a temporary file beside the output, renamed over it only when every batch is
    written (``lightsum.atomic.AtomicFile``): an interrupted run never leaves a partial file under
    the output's name, and the temporary file of a killed run is removed by the next run writing
    the same output.

    Args:
        path: output file. Default: ``<input>.predictions.csv`` beside ``data.predict_path``, or
            ``predictions.csv`` in the checkpoint's run folder when predicting the generated test set.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self._out: AtomicFile | None = None
        self._rows = 0

    @staticmethod
    def source(trainer: pl.Trainer) -> str | None:
        """The input file being predicted (``data.predict_path``), if any."""
        return trainer.datamodule.hparams.get("predict_path") if trainer.datamodule is not None else None

    def output_path(self, trainer: pl.Trainer) -> Path:
        run = run_folder_of(trainer.ckpt_path) if trainer.ckpt_path else None
        return prediction_target(self.path, self.source(trainer)) or (run or Path(trainer.default_root_dir)) / "predictions.csv"

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            raise ValueError("predict writes one CSV from one process: run it with --trainer.devices 1")
        target = self.output_path(trainer)
        check_target(target, self.source(trainer))
        self._out = AtomicFile(target, "w")
        self._out.open()
        self._out.write("row,probability,label\n")
        self._rows = 0

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        probs = prediction["probability"].float().cpu().tolist()
        labels = prediction["label"].cpu().tolist()
        rows = range(self._rows, self._rows + len(probs))
        self._out.write("".join(f"{r},{p:.7g},{y}\n" for r, p, y in zip(rows, probs, labels)))
        self._rows += len(probs)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._out.commit()  # the output appears complete or not at all
        print(f"lightsum: wrote {self._rows} predictions to {self._out.target}")
        self._out = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._out is not None:
            self._out.abort()
            self._out = None
