"""What a sequence is: ``seq_len`` digits 0-9. Checking digits, reading users' files of them, and
the one check that a model and the data agree on length and layout."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

# How the network reads a sequence: ``sequence`` is seq_len steps of 1 feature (one digit per
# step), ``flat`` one step of seq_len features (the original notebook's reshape).
Layout = Literal["sequence", "flat"]
SHAPE_KEYS = ("seq_len", "layout")  # what a model is built for and the data must match
_DIGITS = frozenset("0123456789")


def check_fits(model: Mapping[str, Any], data: Mapping[str, Any], remedy: str = "") -> None:
    """Refuse data whose ``seq_len`` or ``layout`` differs from what the model was built for.

    In the sequence layout the weights of a 30-digit model load into a 20-digit one, so a mismatch
    would silently score sequences of a length the model never saw.

    Args:
        model: the model's hyperparameters (or a checkpoint's).
        data: the data module's arguments.
        remedy: appended to the suggestion, e.g. ``" with path/to/best.ckpt"``.

    Raises:
        ValueError: naming the key, both values and the fix.
    """
    for key in SHAPE_KEYS:
        if key in model and data.get(key) is not None and model[key] != data[key]:
            raise ValueError(f"the model reads {key}={model[key]!r} but data.{key} is {data[key]!r}: "
                             f"use --data.{key} {model[key]}{remedy}")


def check_digits(digits: np.ndarray | torch.Tensor, seq_len: int, where: str = "digits") -> torch.Tensor:
    """``digits`` as a tensor, refused unless it is integers 0-9 of shape (N, seq_len).

    Raises:
        ValueError: the wrong shape or dtype, or the first value outside 0-9 with its row and column.
    """
    tensor = torch.as_tensor(digits)
    if tensor.ndim != 2 or tensor.shape[1] != seq_len:
        raise ValueError(f"{where} must have shape (N, {seq_len}), got {tuple(tensor.shape)}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{where} must be integers 0-9, got dtype {digits.dtype}")  # numpy's or torch's name
    bad = torch.nonzero((tensor < 0) | (tensor > 9))
    if len(bad):
        row, column = bad[0].tolist()
        raise ValueError(f"{where}, row {row}, column {column}: {int(tensor[row, column])} is not a digit 0-9")
    return tensor


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
    if not path.exists():
        raise ValueError(f"data.predict_path: file not found: {path}")
    if not path.is_file():
        raise ValueError(f"data.predict_path: {path} is not a file")
    digits = _read_npy(path, seq_len) if path.suffix.lower() == ".npy" else _read_text(path, seq_len)
    if len(digits) == 0:
        raise ValueError(f"data.predict_path: {path} holds no sequences")
    return digits


def _read_npy(path: Path, seq_len: int) -> torch.Tensor:
    if path.stat().st_size == 0:  # np.load would raise EOFError
        raise ValueError(f"data.predict_path: {path} is empty (0 bytes), not a .npy array")
    try:
        array = np.load(path, allow_pickle=False)  # never unpickle a user's file
    except (ValueError, OSError, EOFError) as err:  # EOFError: a file cut short
        raise ValueError(f"data.predict_path: {path} is not a readable .npy array ({err})") from None
    return check_digits(array, seq_len, f"data.predict_path: {path}").to(torch.uint8)


def _read_text(path: Path, seq_len: int) -> torch.Tensor:
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
    return torch.from_numpy(flat.reshape(len(joined), seq_len).copy())
