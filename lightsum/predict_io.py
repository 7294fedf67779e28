"""Prediction files: reading users' sequences (CSV or .npy) and writing predictions as CSV."""

from __future__ import annotations

import glob
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from lightsum.checkpointing import remove_if_writer_died

_DIGITS = frozenset("0123456789")


def read_sequences(path: str | os.PathLike, seq_len: int) -> torch.Tensor:
    """Digit sequences from a user's file, checked, as a uint8 tensor (N, seq_len).

    Args:
        path: a ``.npy`` file of N x seq_len integers 0-9, or a text/CSV file with one sequence
            per line, written either as comma-separated digits (``3,0,9,...``) or as one string of
            seq_len digits (``309...``).
        seq_len: digits every sequence must have.

    Raises:
        ValueError: a missing, unreadable or empty file, or the first bad line/row, named with what
            is wrong.
    """
    path = Path(path)
    identity = _identity(path, seq_len)
    checked = _checked.pop(identity, None) if identity is not None else None
    return checked if checked is not None else _load(path, seq_len)


def check_sequences(path: str | os.PathLike, seq_len: int) -> None:
    """Read and check a user's file now, as :func:`read_sequences` does.

    The CLI calls this before it builds the trainer, so a bad file is refused before a run folder
    exists. The sequences wait for the next :func:`read_sequences` of the same, unchanged file,
    which takes them instead of reading the file a second time.

    Raises:
        ValueError: as :func:`read_sequences`.
    """
    path = Path(path)
    digits = _load(path, seq_len)
    _checked.clear()
    identity = _identity(path, seq_len)
    if identity is not None:
        _checked[identity] = digits


# The file check_sequences read last, until read_sequences takes it: identity -> sequences.
_checked: dict[tuple, torch.Tensor] = {}


def _identity(path: Path, seq_len: int) -> tuple | None:
    """The file and its state: changes when the file does; None when it cannot be examined."""
    try:
        st = path.stat()
    except OSError:
        return None
    return str(path.resolve()), seq_len, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _load(path: Path, seq_len: int) -> torch.Tensor:
    if not path.exists():
        raise ValueError(f"data.predict_path: file not found: {path}")
    if not path.is_file():
        raise ValueError(f"data.predict_path: {path} is not a file")
    digits = _read_npy(path, seq_len) if path.suffix.lower() == ".npy" else _read_text(path, seq_len)
    if len(digits) == 0:
        raise ValueError(f"data.predict_path: {path} holds no sequences")
    return torch.from_numpy(digits)


def _read_npy(path: Path, seq_len: int) -> np.ndarray:
    if path.stat().st_size == 0:  # np.load would raise EOFError
        raise ValueError(f"data.predict_path: {path} is empty (0 bytes), not a .npy array")
    try:
        array = np.load(path, allow_pickle=False)  # never unpickle a user's file
    except (ValueError, OSError, EOFError) as err:  # EOFError: a file cut short
        raise ValueError(f"data.predict_path: {path} is not a readable .npy array ({err})") from None
    if array.ndim != 2 or array.shape[1] != seq_len:
        raise ValueError(f"data.predict_path: {path} must hold an array of shape (N, {seq_len}), got {array.shape}")
    if array.dtype.kind not in "iu":
        raise ValueError(f"data.predict_path: {path} must hold integers 0-9, got dtype {array.dtype}")
    bad = np.argwhere((array < 0) | (array > 9))
    if len(bad):
        row, column = (int(i) for i in bad[0])
        raise ValueError(f"data.predict_path: {path}, row {row}, column {column}: {array[row, column]} is not a digit 0-9")
    return array.astype(np.uint8)


def _read_text(path: Path, seq_len: int) -> np.ndarray:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a BOM some editors write is not a digit
    except UnicodeDecodeError:
        raise ValueError(f"data.predict_path: {path} is not a text file (expected CSV or .npy)") from None
    except OSError as err:  # e.g. no read permission
        raise ValueError(f"data.predict_path: {path} cannot be read ({err.strerror or err})") from None
    while lines and not lines[-1].strip():
        lines.pop()  # trailing blank lines only; a blank line inside the file is an error
    joined = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        fields = [f.strip() for f in text.split(",")] if "," in text else list(text)
        if len(fields) != seq_len:
            raise ValueError(f"data.predict_path: {path}, line {number}: expected {seq_len} digits, got {len(fields)}: {text[:80]!r}")
        bad = next((f for f in fields if f not in _DIGITS), None)
        if bad is not None:
            raise ValueError(f"data.predict_path: {path}, line {number}: {bad!r} is not a digit 0-9")
        joined.append("".join(fields))
    flat = np.frombuffer("".join(joined).encode("ascii"), dtype=np.uint8) - ord("0")
    return flat.reshape(len(joined), seq_len)


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


def _partial_prefix(target: Path) -> str:
    """A writer's temporary file is ``.<name>.partial-<host>-<pid>`` beside ``target``."""
    return f".{target.name}.partial-{socket.gethostname()}-"


def remove_orphan_partials(target: Path) -> None:
    """Delete the temporary files of writers of ``target`` on this host that were killed (``kill -9``
    skips the clean-up): those whose process no longer exists. Only this output's temporary
    files, as the folder is the user's; other hosts' ones are left (their processes cannot be seen)."""
    prefix = _partial_prefix(target)
    for partial in target.parent.glob(glob.escape(prefix) + "*"):
        remove_if_writer_died(partial, partial.name[len(prefix):])


class PredictionCSV(BasePredictionWriter):
    """Writes ``predict`` results to a CSV file: ``row,probability,label`` (row: 0-based input position).

    Rows are streamed to a temporary file beside the output, renamed over it only when every
    batch is written, so an interrupted run never leaves a partial file under the output's name.
    The temporary file of a killed run is removed by the next run writing the same output.

    Args:
        path: output file. Default: ``<input>.predictions.csv`` beside ``data.predict_path``, or
            ``predictions.csv`` in the run folder when predicting the generated test set.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self._target: Path | None = None
        self._partial: Path | None = None
        self._file: Any = None
        self._rows = 0

    def output_path(self, trainer: pl.Trainer) -> Path:
        source = getattr(trainer.datamodule, "hparams", {}).get("predict_path")
        return prediction_target(self.path, source) or Path(trainer.log_dir or ".") / "predictions.csv"

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            raise ValueError("predict writes one CSV from one process: run it with --trainer.devices 1")
        self._target = self.output_path(trainer)
        check_target(self._target, getattr(trainer.datamodule, "hparams", {}).get("predict_path"))
        self._target.parent.mkdir(parents=True, exist_ok=True)
        remove_orphan_partials(self._target)
        self._partial = self._target.with_name(f"{_partial_prefix(self._target)}{os.getpid()}")
        self._file = self._partial.open("w")
        self._file.write("row,probability,label\n")
        self._rows = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        probs = prediction["probability"].float().cpu().numpy()
        labels = prediction["label"].cpu().numpy()
        rows = range(self._rows, self._rows + len(probs))
        self._file.write("".join(f"{r},{p:.7g},{y}\n" for r, p, y in zip(rows, probs.tolist(), labels.tolist())))
        self._rows += len(probs)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._partial, self._target)  # atomic: the output appears complete or not at all
        self._file = None
        print(f"lightsum: wrote {self._rows} predictions to {self._target}")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._file is not None:
            self._file.close()
            self._partial.unlink(missing_ok=True)
            self._file = None
