"""What a sequence is: ``seq_len`` digits 0-9. Checking digits, reading users' files of them, and
the one check that a model and the data agree on length and layout."""

from __future__ import annotations

import codecs
import math
import os
import tokenize
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal, NoReturn

import numpy as np
import torch

# How the network reads a sequence: ``sequence`` is seq_len steps of 1 feature (one digit per
# step), ``flat`` one step of seq_len features (the original notebook's reshape).
Layout = Literal["sequence", "flat"]
SHAPE_KEYS = ("seq_len", "layout")  # what a model is built for and the data must match
_DIGITS = frozenset("0123456789")
# Digits are these integer types: torch has few operations on uint16-uint64 (not even a comparison),
# so those are refused in numpy and torch alike rather than accepted by one and not the other.
_TORCH_INTEGERS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)
_CHECK_ROWS = 65_536  # rows of an array checked at a time: the comparisons' temporaries stay small
# Users' files are read a piece at a time, so that reading one costs its digits (seq_len bytes a
# sequence) and a few of these pieces, whatever the file's size or integer type.
_TEXT_BLOCK = 4 * 2**20  # bytes of a text file
_NPY_VALUES = 2**21  # values of a .npy array
_BOM = codecs.BOM_UTF8  # some editors start a UTF-8 file with it; it is not a digit
_NEWLINE, _CR, _COMMA, _ZERO = (np.uint8(ord(c)) for c in "\n\r,0")


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
            raise ValueError(
                f"the model reads {key}={model[key]!r} but data.{key} is {data[key]!r}: "
                f"use --data.{key} {model[key]}{remedy}"
            )


def check_digits(digits: np.ndarray | torch.Tensor | Any, seq_len: int, where: str = "digits") -> torch.Tensor:
    """``digits`` as a tensor, refused unless it is integers 0-9 of shape (N, seq_len).

    Integers means int8 to int64 or uint8, in numpy or torch; a list or tuple is read as numpy
    reads it. A tensor is returned as it is (on its device); a numpy array shares its memory.

    Raises:
        ValueError: the wrong shape or dtype, a meta or sparse tensor, something that is not an
            array, or the first value outside 0-9 with its row and column.
    """
    if isinstance(digits, torch.Tensor):
        return _checked_tensor(digits, seq_len, where)
    array = _as_array(digits, where)
    _check_shape(array.shape, seq_len, where)
    _check_dtype(array.dtype, where)
    for start in range(0, len(array), _CHECK_ROWS):
        bad = _first_bad(array[start : start + _CHECK_ROWS].reshape(-1))
        if bad is not None:
            row, column = divmod(start * seq_len + bad[0], seq_len)
            _refuse_value(where, row, column, bad[1])
    if not array.dtype.isnative:  # torch reads native byte order only
        array = array.astype(array.dtype.newbyteorder("="))
    return torch.from_numpy(array)


def _checked_tensor(tensor: torch.Tensor, seq_len: int, where: str) -> torch.Tensor:
    if tensor.is_meta:
        raise ValueError(f"{where} is a meta tensor: it has a shape but no values")
    if tensor.layout != torch.strided:
        raise ValueError(f"{where} must be a dense tensor, got layout {tensor.layout}: use .to_dense()")
    _check_shape(tuple(tensor.shape), seq_len, where)
    if tensor.dtype not in _TORCH_INTEGERS:
        _refuse_dtype(tensor.dtype, where, wide_unsigned=tensor.dtype in _WIDE_UNSIGNED)
    bad = torch.nonzero((tensor < 0) | (tensor > 9))
    if len(bad):
        row, column = bad[0].tolist()
        _refuse_value(where, row, column, int(tensor[row, column]))
    return tensor


def _as_array(digits: Any, where: str) -> np.ndarray:
    try:
        return np.asarray(digits)
    except (ValueError, TypeError, OverflowError) as err:  # e.g. rows of different lengths
        raise ValueError(f"{where} cannot be read as an array of integers 0-9: {err}") from None


def _check_shape(shape: tuple[int, ...], seq_len: int, where: str) -> None:
    if len(shape) != 2 or shape[1] != seq_len or shape[0] < 0:
        raise ValueError(f"{where} must have shape (N, {seq_len}), got {tuple(shape)}")


def _check_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.kind != "i" and dtype != np.uint8:
        _refuse_dtype(dtype, where, wide_unsigned=dtype.kind == "u")


def _refuse_dtype(dtype: Any, where: str, wide_unsigned: bool) -> NoReturn:
    if wide_unsigned:
        raise ValueError(f"{where} must be integers 0-9 of a signed type or uint8, got dtype {dtype}")
    raise ValueError(f"{where} must be integers 0-9, got dtype {dtype}")  # numpy's or torch's name


def _first_bad(values: np.ndarray) -> tuple[int, int] | None:
    """(position, value) of the first of a flat array's values outside 0-9, or None."""
    outside = values > 9
    if values.dtype.kind == "i":
        outside |= values < 0
    found = np.flatnonzero(outside)
    return (int(found[0]), int(values[found[0]])) if len(found) else None


def _refuse_value(where: str, row: int, column: int, value: int) -> NoReturn:
    raise ValueError(f"{where}, row {row}, column {column}: {value} is not a digit 0-9")


def read_sequences(path: str | os.PathLike, seq_len: int) -> torch.Tensor:
    """Digit sequences from a user's file, checked, as a uint8 tensor (N, seq_len).

    Memory: the sequences (seq_len bytes each) and a few pieces of the file of some MB, whatever
    the file's size or integer type. A text file is read twice: once to check every line and
    count them, once to parse them into an array of exactly that size. Before the array is made,
    its size is checked against the memory available.

    Args:
        path: a ``.npy`` file of N x seq_len integers 0-9, or a text/CSV file with one sequence
            per line, written either as comma-separated digits (``3,0,9,...``) or as one string of
            seq_len digits (``309...``).
        seq_len: digits every sequence must have.

    Raises:
        ValueError: a missing, unreadable, damaged or empty file, one too large for the memory
            available, or the first bad line/row, named with what is wrong.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"data.predict_path: file not found: {path}")
    if not path.is_file():
        raise ValueError(f"data.predict_path: {path} is not a file")
    where = f"data.predict_path: {path}"
    digits = _read_npy(path, seq_len, where) if path.suffix.lower() == ".npy" else _read_text(path, seq_len, where)
    if len(digits) == 0:
        raise ValueError(f"data.predict_path: {path} holds no sequences")
    return torch.from_numpy(digits)


def _check_room(where: str, rows: int, seq_len: int) -> None:
    """Refuse a file whose sequences (and their labels, a byte each) the machine cannot hold."""
    from lightsum.data.memory import available_memory  # here: the data module imports this module

    needed, available = rows * (seq_len + 1), available_memory()
    if available is not None and needed > available:
        raise ValueError(
            f"{where} holds {rows:,} sequences, {needed / 1e9:.1f} GB in memory; this machine "
            f"has {available / 1e9:.1f} GB available: split the file"
        )


def _read_npy(path: Path, seq_len: int, where: str) -> np.ndarray:
    size = path.stat().st_size
    if size == 0:  # np.lib.format would say "EOF: reading magic string"
        raise ValueError(f"{where} is empty (0 bytes), not a .npy array")
    try:
        with open(path, "rb") as file:
            shape, fortran_order, dtype = _npy_header(file, where)
            _check_npy(shape, dtype, seq_len, size - file.tell(), where)
            _check_room(where, shape[0], seq_len)
            return _npy_digits(file, shape, fortran_order, dtype, where)
    except OSError as err:  # e.g. no read permission
        raise ValueError(f"{where} cannot be read ({err.strerror or err})") from None


def _npy_header(file: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """A .npy file's (shape, fortran_order, dtype), read without the array; the file is left at
    the array's first byte. Nothing is unpickled: an object array's header only names its dtype."""
    try:
        version = np.lib.format.read_magic(file)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unknown format version {version[0]}.{version[1]}")
        # 3.0 differs from 2.0 only in allowing UTF-8 field names, of structured dtypes (refused).
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read(file)
    # np.lib.format's ways of saying "damaged": it parses the header as a Python literal.
    except (ValueError, TypeError, EOFError, SyntaxError, RecursionError, tokenize.TokenError) as err:
        raise ValueError(f"{where} is not a readable .npy array ({err})") from None


def _check_npy(shape: tuple[int, ...], dtype: np.dtype, seq_len: int, data_bytes: int, where: str) -> None:
    """Refuse from the header alone, before any memory is given: objects, the wrong shape or dtype,
    and a header that claims more data than the file holds (a damaged or forged file)."""
    if dtype.hasobject:
        raise ValueError(
            f"{where} is not a readable .npy array (it holds pickled Python objects, which are never loaded)"
        )
    _check_shape(shape, seq_len, where)
    _check_dtype(dtype, where)
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > data_bytes:
        raise ValueError(
            f"{where} is not a readable .npy array: its header describes {shape[0]:,} x {shape[1]} {dtype} "
            f"({claimed:,} bytes) but the file holds {data_bytes:,} bytes of data"
        )


def _npy_digits(file: BinaryIO, shape: tuple[int, int], fortran_order: bool, dtype: np.dtype, where: str) -> np.ndarray:
    """The array, a piece at a time: each piece checked and stored as uint8 in (rows, seq_len).

    Plain reads rather than a memory map: every page of a map that has been read counts in the
    process's resident memory until the map is closed, the whole file for an int64 array.
    """
    rows, seq_len = shape
    order = "F" if fortran_order else "C"
    digits = np.empty(shape, np.uint8, order=order)
    flat = digits.reshape(-1, order=order)  # a view: values go in in the file's order
    first_bad: tuple[int, int] | None = None  # (row-major position, value) of the first value outside 0-9
    for start in range(0, flat.size, _NPY_VALUES):
        count = min(_NPY_VALUES, flat.size - start)
        data = file.read(count * dtype.itemsize)
        if len(data) < count * dtype.itemsize:  # the file shrank since its size was checked
            raise ValueError(f"{where} is not a readable .npy array: it ended while it was read")
        values = np.frombuffer(data, dtype)
        bad = _first_bad(values) if not fortran_order else _first_bad_by_row(values, start, rows, seq_len)
        if bad is not None:
            position = start + bad[0] if not fortran_order else bad[0]
            first_bad = min(first_bad or (position, bad[1]), (position, bad[1]))
            if not fortran_order:
                break  # every later value comes later in row-major order
        flat[start : start + count] = values
    if first_bad is not None:
        _refuse_value(where, *divmod(first_bad[0], seq_len), first_bad[1])
    return np.ascontiguousarray(digits)  # a copy for a Fortran-order file only


def _first_bad_by_row(values: np.ndarray, start: int, rows: int, seq_len: int) -> tuple[int, int] | None:
    """For a Fortran-order (column after column) piece starting at ``start``: the row-major position
    and value of its first value outside 0-9 by row, then column, as C order would find it."""
    outside = values > 9
    if values.dtype.kind == "i":
        outside |= values < 0
    found = np.flatnonzero(outside)
    if not len(found):
        return None
    column, row = np.divmod(start + found, rows)
    position = row * seq_len + column
    best = int(position.argmin())
    return int(position[best]), int(values[found[best]])


def _read_text(path: Path, seq_len: int, where: str) -> np.ndarray:
    rows = sum(len(chunk) for chunk in _text_digits(path, seq_len, where))  # every line checked, none kept
    _check_room(where, rows, seq_len)
    digits = np.empty((rows, seq_len), np.uint8)
    done = 0
    for chunk in _text_digits(path, seq_len, where):
        if done + len(chunk) > rows:
            _refuse_changed(where)
        digits[done : done + len(chunk)] = chunk
        done += len(chunk)
    if done != rows:
        _refuse_changed(where)
    return digits


def _refuse_changed(where: str) -> NoReturn:
    raise ValueError(f"{where} changed while it was read: run predict again when it is written")


def _text_digits(path: Path, seq_len: int, where: str) -> Iterator[np.ndarray]:
    """The sequences of a text file as uint8 arrays (n, seq_len), a block of whole lines at a time."""
    lines = _TextLines(seq_len, where)
    try:
        with open(path, "rb") as file:
            rest = file.read(len(_BOM)).removeprefix(_BOM)
            while block := file.read(_TEXT_BLOCK):
                data = rest + block
                cut = data.rfind(b"\n") + 1
                if not cut and len(data) > _TEXT_BLOCK:
                    lines.refuse_long_line(data)
                rest = data[cut:]
                if cut:
                    yield lines.parse(data[:cut])
            if rest:  # the last line, without a line end
                yield lines.parse(rest + b"\n")
    except OSError as err:  # e.g. no read permission
        raise ValueError(f"{where} cannot be read ({err.strerror or err})") from None


class _TextLines:
    """Parses blocks of whole lines of a text file into digits, numbering the lines across blocks.

    A block whose lines are all written alike is parsed by numpy at once (``_uniform_lines``);
    any other is parsed a line at a time, which finds and names a bad line. Blank lines may end the
    file only: a blank line is refused when a sequence follows it, in whatever block.
    """

    def __init__(self, seq_len: int, where: str) -> None:
        self.seq_len, self.where = seq_len, where
        self.number = 1  # of the next line
        self.blank: int | None = None  # the first blank line since the last sequence

    def parse(self, block: bytes) -> np.ndarray:
        """The digits of ``block``, whole lines each ending in ``\\n``."""
        digits = _uniform_lines(block, self.seq_len)
        if digits is None:
            return self.parse_each(block)
        if len(digits) and self.blank is not None:
            self.refuse_blank()
        self.number += len(digits)
        return digits

    def parse_each(self, block: bytes) -> np.ndarray:
        joined = []
        for raw in block.split(b"\n")[:-1]:
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ValueError(f"{self.where} is not a text file (expected CSV or .npy)") from None
            if not text:
                self.blank = self.number if self.blank is None else self.blank
                self.number += 1
                continue
            if self.blank is not None:
                self.refuse_blank()
            joined.append(self.line_digits(text))
            self.number += 1
        flat = np.frombuffer("".join(joined).encode("ascii"), dtype=np.uint8) - _ZERO
        return flat.reshape(len(joined), self.seq_len)

    def line_digits(self, text: str) -> str:
        """One line's digits as a string, or the line refused with what is wrong."""
        fields = [f.strip() for f in text.split(",")] if "," in text else list(text)
        if len(fields) != self.seq_len:
            raise ValueError(
                f"{self.where}, line {self.number}: expected {self.seq_len} digits, got {len(fields)}: {text[:80]!r}"
            )
        bad = next((f for f in fields if f not in _DIGITS), None)
        if bad is not None:
            raise ValueError(f"{self.where}, line {self.number}: {bad!r} is not a digit 0-9")
        return "".join(fields)

    def refuse_blank(self) -> NoReturn:
        raise ValueError(f"{self.where}, line {self.blank}: expected {self.seq_len} digits, got 0: ''")

    def refuse_long_line(self, data: bytes) -> NoReturn:
        """A line longer than a block is no sequence; and a file with no line end is often binary."""
        if self.blank is not None:
            self.refuse_blank()
        try:  # the start of the line only; an incremental decoder accepts a character cut in two at the end
            head = codecs.getincrementaldecoder("utf-8")().decode(data[:240])
        except UnicodeDecodeError:
            raise ValueError(f"{self.where} is not a text file (expected CSV or .npy)") from None
        raise ValueError(
            f"{self.where}, line {self.number}: expected {self.seq_len} digits, got a line of over "
            f"{_TEXT_BLOCK:,} bytes: {head.strip()[:80]!r}"
        )


def _uniform_lines(block: bytes, seq_len: int) -> np.ndarray | None:
    """The digits of a block of lines all written alike, ``seq_len`` digits or ``seq_len``
    comma-separated digits and a ``\\n`` or ``\\r\\n`` each, parsed by numpy; None for any other
    block. A block that does not reshape into such lines byte for byte is None, never misread."""
    width = block.find(b"\n") + 1
    if not width or len(block) % width:
        return None
    lines = np.frombuffer(block, dtype=np.uint8).reshape(-1, width)
    if not (lines[:, -1] == _NEWLINE).all():
        return None
    body = lines[:, :-1]
    if body.shape[1] and (body[:, -1] == _CR).all():
        body = body[:, :-1]
    if seq_len > 1 and body.shape[1] == 2 * seq_len - 1:
        if not (body[:, 1::2] == _COMMA).all():
            return None
        body = body[:, ::2]
    if body.shape[1] != seq_len:
        return None
    digits = body - _ZERO  # a byte below "0" wraps round past 9
    return digits if (digits <= 9).all() else None
