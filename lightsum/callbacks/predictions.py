"""The ``predict`` writer: ``row,probability,label`` to a CSV file, written atomically."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from lightsum.atomic import AtomicFile
from lightsum.run_folders import run_folder_of

# A file ``predict`` reads, by path; several (a list, e.g. every --config); or None.
Protected = str | os.PathLike | Iterable[str | os.PathLike | None] | None


def prediction_target(path: str | os.PathLike | None, source: str | os.PathLike | None) -> Path | None:
    """Where ``predict`` writes: ``path`` when given, else ``<input>.predictions.csv`` beside the
    input file ``source``; None for the generated test set (the run folder's ``predictions.csv``)."""
    if path is not None:
        return Path(path)
    return Path(source).with_suffix(".predictions.csv") if source else None


def check_target(target: Path, protected: Mapping[str, Protected]) -> None:
    """Refuse, before anything is predicted, an output the CSV cannot or must not be renamed over.

    The CSV replaces the target whole (``AtomicFile`` renames it over it): a target naming a
    file the command reads would lose it, and one naming a device, a fifo or a socket would
    become a regular file in its place. A symlink is judged by what it links to, a hard link
    by its file.

    Args:
        target: the output file.
        protected: what the command reads, as the error names it -> its path, or several (a list;
            None for none). E.g. ``{"the input file": ..., "the checkpoint": ..., "the config
            file": [...]}``.

    Raises:
        ValueError: ``target`` is (or links to) a ``protected`` file, a folder or anything but a
            regular file, or its folder cannot be made or written.
    """
    target = Path(target)
    real = _resolved(target)
    for name, path in _paths(protected):
        if _same_file(real, path):
            raise ValueError(f"predictions.path would overwrite {name} {path}")
    if real.is_dir():
        raise ValueError(f"predictions.path: {target} is a folder; name a file, e.g. {target / 'predictions.csv'}")
    kind = _special_kind(real)
    if kind is not None:
        shown = f"{target} (a link to {real})" if target.is_symlink() else str(target)
        raise ValueError(f"predictions.path: {shown} is {kind}, not a regular file; name a file, e.g. predictions.csv")
    folder = target.absolute().parent
    existing = next(f for f in (folder, *folder.parents) if f.exists())
    if not existing.is_dir():
        raise ValueError(f"predictions.path: cannot write {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"predictions.path: cannot write {target}: no write permission in {existing}")


def _resolved(target: Path) -> Path:
    try:
        return target.resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop, before Python 3.13
        raise ValueError(f"predictions.path: {target} cannot be resolved ({err})") from None


def _paths(protected: Mapping[str, Protected]) -> Iterator[tuple[str, Path]]:
    """(name, path) for each path in ``protected``, lists flattened, Nones left out."""
    for name, value in protected.items():
        if isinstance(value, (str, os.PathLike)):
            yield name, Path(value)
        elif value is not None:
            for item in value:
                yield from _paths({name: item})


def _same_file(real: Path, path: Path) -> bool:
    """Whether the resolved path ``real`` is the file ``path`` (by inode where both exist, so a
    hard link counts too), or the same name resolved where either does not exist yet."""
    with suppress(OSError):
        return os.path.samefile(real, path)
    with suppress(OSError, RuntimeError):
        return real == path.resolve()
    return False


_SPECIAL_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def _special_kind(real: Path) -> str | None:
    """What an existing ``real`` is when it is not a regular file (nor a folder), else None."""
    try:
        mode = real.stat().st_mode
    except OSError:  # not there (it will be made), or not ours to look at (the write will say so)
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), "a special file")


def csv_field(text: str) -> str:
    """``text`` as one CSV field: quoted when it holds a comma, quote or line break."""
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\r\n') else text


class PredictionCSV(BasePredictionWriter):
    """Writes ``predict`` results to a CSV file: ``row,probability,label`` (row: 0-based input position;
    label: 0/1 for digit sums, the class's own name for a model trained on files).

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
        self._names: list[str] | None = None

    @staticmethod
    def source(trainer: pl.Trainer) -> str | None:
        """The input file being predicted (``data.predict_path``), if any."""
        return trainer.datamodule.hparams.get("predict_path") if trainer.datamodule is not None else None

    def output_path(self, trainer: pl.Trainer) -> Path:
        run = run_folder_of(trainer.ckpt_path) if trainer.ckpt_path else None
        return (
            prediction_target(self.path, self.source(trainer))
            or (run or Path(trainer.default_root_dir)) / "predictions.csv"
        )

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            raise ValueError("predict writes one CSV from one process: run it with --trainer.devices 1")
        target = self.output_path(trainer)
        # Again here, for the run folder's default and for whoever calls trainer.predict directly;
        # the config files are the CLI's to protect (it checks before anything runs).
        check_target(target, {"the input file": self.source(trainer), "the checkpoint": trainer.ckpt_path})
        self._out = AtomicFile(target.resolve(), "w")  # through a link, to the file it names: the link stays
        self._out.open()
        self._out.write("row,probability,label\n")
        self._rows = 0
        # Files' classes by their own names (a model trained on "ok"/"fraud" labels writes those).
        classes = (pl_module.hparams.get("schema") or {}).get("classes")
        self._names = [csv_field(str(name)) for name in classes] if classes else None

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        probs = prediction["probability"].float().cpu().tolist()
        labels = prediction["label"].cpu().tolist()
        if self._names is not None:
            labels = [self._names[y] for y in labels]
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
