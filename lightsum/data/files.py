"""Reading one user's file of labelled sequences (.npz, .csv, .parquet) into padded numpy arrays.

``read_sequence_file`` reads the file, checks it, and returns a ``SequenceFile``: the sequences
padded to the longest one, their lengths, the labels as codes into their sorted names, and (for
token steps) the tokens. Every problem is one ``ValueError`` of one line that starts with
``"{where}: {path}"`` and names the row, the column and the step where there is one, and what to do:
the CLI prints it as it is.

The arrays are cached beside the file, in ``<file name>.lightsum/`` (``values.npy``, ``lengths.npy``,
``labels.npy``, ``meta.json``), and returned as read-only memory maps of that cache: a later read,
and every process on the machine (the DDP ranks), then shares one copy in the page cache instead
of parsing the file again and holding a copy each. The cache is rebuilt when the file (its size or
modification time) or a reading option changes, or when it is damaged.

This module knows nothing about torch or Lightning: numpy, the standard library, and pyarrow for
Parquet (optional: ``pip install 'lightsum[parquet]'``).
"""

from __future__ import annotations

import csv
import json
import math
import mmap
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np

from lightsum.data.memory import available_memory

Steps = Literal["auto", "numbers", "tokens"]
Labels = Literal["required", "optional"]
FORMATS = (".csv", ".npz", ".parquet")
CACHE_SUFFIX = ".lightsum"  # the cache of train.csv is the folder train.csv.lightsum/
CACHE_VERSION = 1  # bump when the cache's layout or meaning changes: older caches are rebuilt
MAX_LABELS = 256  # label codes are uint8
_CHUNK_ROWS = 65_536  # at most this many rows parsed (csv) or converted (parquet, npz) at a time
# ... and about this many bytes of them (csv text, npz rows as stored; parquet: below): a
# chunk's temporaries (Python strings, float64 blocks, Arrow batches) are then a few MB whatever the
# rows' width, not a fixed tens of MB that dominate a small file's peak memory.
_CHUNK_BYTES = 1 << 21
# Arrow's Parquet reader holds several times a batch while it decodes one (levels, buffers grown by
# doubling, its allocator's slack): its batches are smaller, a few hundred kB of values.
_PARQUET_BATCH_BYTES = 1 << 18
# A chunk this large is kept in a memory map of its own (see _own): well below a chunk's steps
# (hundreds of kB: _CHUNK_BYTES of text or stored rows, _PARQUET_BATCH_BYTES / 2), so every chunk of a large file is.
_OWN_MAP_BYTES = 1 << 16
_PARQUET_BUFFER = 1 << 20  # bytes read from a .parquet file at a time (pyarrow's default reads a column chunk whole)
_ORPHAN_AGE_S = 24 * 3600  # a partial cache folder this old is a killed writer's, not a slow one's
_PARTIAL = ".lightsum-partial-"  # name part of the temporary folder a cache is built in
_CSV_FIELD_LIMIT = 2**31 - 1  # the csv module's default (128 KiB a field) is short for a long sequence
_NO_PYARROW = "reading .parquet needs pyarrow: pip install 'lightsum[parquet]'"


@dataclass(frozen=True)
class SequenceFile:
    """One file's sequences, padded to the longest, with their labels.

    ``values`` is float32 (N, L, F) for numbers (padding 0.0) or int32 (N, L) for tokens (codes
    into ``tokens``, padding -1). Read with ``cache=True``, the arrays are usually read-only
    ``np.memmap`` views of the cache beside the file; otherwise, or when the cache could not be
    written, ordinary arrays in memory.
    """

    path: str  # the file read (as given)
    values: np.ndarray  # numbers: float32 (N, L, F); tokens: int32 (N, L) codes into `tokens`, -1 = padding
    lengths: np.ndarray  # int64 (N,), 1 <= lengths[i] <= L: valid steps of row i
    label_codes: np.ndarray | None  # uint8 (N,): index into label_names; None when the file has no labels
    label_names: tuple[str, ...]  # the distinct label values as strings, sorted; () when no labels
    tokens: tuple[str, ...] | None  # token steps: the file's distinct tokens in code order (sorted); None for numbers

    @property
    def num_rows(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.values.shape[1])

    @property
    def num_features(self) -> int:
        return int(self.values.shape[2]) if self.values.ndim == 3 else 1

    @property
    def steps(self) -> Literal["numbers", "tokens"]:
        return "numbers" if self.tokens is None else "tokens"


def read_sequence_file(
    path: str | os.PathLike,
    *,
    where: str = "data",
    label_column: str = "label",
    sequence_column: str = "sequence",
    npz_keys: tuple[str, str, str] = ("x", "y", "lengths"),
    steps: Steps = "auto",
    labels: Labels = "required",
    cache: bool = True,
) -> SequenceFile:
    """Read, check and (with ``cache``) cache one file of labelled sequences.

    Args:
        path: a ``.npz``, ``.csv`` or ``.parquet`` file.
        where: what the file is to the user, the prefix of every error (e.g. ``"data.train_path"``).
        label_column: the label column of a ``.csv`` or ``.parquet`` file.
        sequence_column: the sequence column: in ``.csv`` steps separated by whitespace, in
            ``.parquet`` a list of numbers, of lists of numbers (features), or of strings (tokens).
        npz_keys: the ``.npz`` arrays' names: sequences (N, L) or (N, L, F), labels (N,), and the
            optional lengths (N,).
        steps: ``numbers``, ``tokens``, or ``auto``: in ``.csv`` numbers when every step of the
            first row is a number; in ``.parquet`` by the column's type; ``.npz`` holds numbers.
        labels: ``optional`` accepts a file without labels (a file to predict): no label column or
            array, or a label column that is empty (csv) or null (parquet) in every row. A column
            with some labels missing is refused either way.
        cache: read from and write to the cache folder ``<file name>.lightsum/`` beside the file.

    Returns:
        The file's ``SequenceFile``. With ``cache``, its arrays are read-only memory maps of the
        cache whenever the cache exists or could be written (the parsed copy is then released).

    Raises:
        ValueError: one line, ``"{where}: {path}: ..."``, for anything wrong with the file or the options.
    """
    source = _Source(os.fsdecode(os.fspath(path)), where)
    options = _Options(label_column, sequence_column, tuple(npz_keys), steps, labels)
    options.check(source)
    stat = _stat_file(source)
    if not cache:
        return _as_file(source, _read_table(source, options, stat.st_size))
    hit = _open_cache(source, options, stat)
    if hit is not None:
        return hit
    table = _read_table(source, options, stat.st_size)
    return _cache_table(source, options, stat, table)


# The file, the options, the refusals ----------------------------------------------------------------


class _Refused(ValueError):
    """A refusal already worded for the user: passed on as it is where other errors are reworded."""


@dataclass(frozen=True)
class _Source:
    path: str  # as the user gave it: errors show it so
    where: str

    @property
    def suffix(self) -> str:
        return Path(self.path).suffix.lower()

    def fail(self, text: str) -> NoReturn:
        # One line whatever a cell held: the CLI prints the message as the whole error.
        message = f"{self.where}: {self.path}: {text}"
        raise _Refused(" ".join(message.splitlines()))


@dataclass(frozen=True)
class _Options:
    label_column: str
    sequence_column: str
    npz_keys: tuple[str, ...]
    steps: str
    labels: str

    def check(self, source: _Source) -> None:
        if self.steps not in ("auto", "numbers", "tokens"):
            source.fail(f"steps={self.steps!r} is not one of 'auto', 'numbers', 'tokens'")
        if self.labels not in ("required", "optional"):
            source.fail(f"labels={self.labels!r} is not one of 'required', 'optional'")
        if len(self.npz_keys) != 3 or not all(isinstance(k, str) and k for k in self.npz_keys):
            source.fail(f"npz_keys={self.npz_keys!r} must be three array names: sequences, labels, lengths")
        if self.label_column == self.sequence_column:
            source.fail(f"the label and sequence columns are both {self.label_column!r}: they must differ")

    def as_json(self) -> dict[str, Any]:
        return {
            "label_column": self.label_column,
            "sequence_column": self.sequence_column,
            "npz_keys": list(self.npz_keys),
            "steps": self.steps,
            "labels": self.labels,
        }


@dataclass
class _Table:
    """A file's arrays in memory, before they are cached."""

    values: np.ndarray
    lengths: np.ndarray
    label_codes: np.ndarray | None
    label_names: tuple[str, ...]
    tokens: tuple[str, ...] | None


def _as_file(source: _Source, table: _Table) -> SequenceFile:
    return SequenceFile(source.path, table.values, table.lengths, table.label_codes, table.label_names, table.tokens)


def _stat_file(source: _Source) -> os.stat_result:
    try:
        stat = os.stat(source.path)
    except FileNotFoundError:
        source.fail("no such file: check the path")
    except OSError as error:
        source.fail(f"cannot be read ({error.strerror}): check the path and its permissions")
    if os.path.isdir(source.path):
        source.fail(f"is a folder, not a file: give one {', '.join(FORMATS)} file")
    if source.suffix not in FORMATS:
        source.fail(f"is not a {', '.join(FORMATS)} file: save the sequences in one of these formats")
    if stat.st_size == 0:
        source.fail("is empty (0 bytes): give a file with a header and rows")
    return stat


def _read_table(source: _Source, options: _Options, size: int) -> _Table:
    readers = {".csv": _read_csv, ".npz": _read_npz, ".parquet": _read_parquet}
    return readers[source.suffix](source, options, size)


def _show(value: Any, limit: int = 40) -> str:
    """A cell's text for a message: quoted, escaped (one line), and cut when long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale / 10:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def _check_memory(source: _Source, needed: int, what: str) -> None:
    """Refuse before reading what this machine cannot hold: a clear error instead of an OOM kill."""
    available = available_memory()
    if available is not None and needed > available:
        source.fail(
            f"{what} needs about {_bytes(needed)} of memory but this machine has {_bytes(available)} "
            "available: use a machine with more memory, or split the file"
        )


def _padded_bytes(source: _Source, lengths: Iterable[np.ndarray], features: int, itemsize: int) -> tuple[int, int]:
    """Rows and longest length, refused when padding every row to the longest cannot fit."""
    lengths = list(lengths)
    rows = sum(len(n) for n in lengths)
    longest = max(int(n.max()) for n in lengths)
    # The compact values are in memory already (available_memory() counts them as used).
    _check_memory(
        source, rows * longest * features * itemsize, f"padding its {rows} rows to the longest ({longest} steps)"
    )
    return rows, longest


def _chunk_rows(row_bytes: float, chunk_bytes: int | None = None) -> int:
    """Rows a chunk holds when a row is ``row_bytes``: about ``chunk_bytes`` (``_CHUNK_BYTES``), at
    least 1, at most ``_CHUNK_ROWS``."""
    budget = _CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    return max(1, min(_CHUNK_ROWS, int(budget // max(row_bytes, 1))))


# Labels and tokens: distinct strings to codes --------------------------------------------------------


class _Coder:
    """Distinct strings numbered in order of first appearance, across chunks.

    Each chunk codes its few distinct values itself (np.unique, Arrow's dictionary), so the Python
    work is per distinct value, never per row or step.
    """

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def add(self, keys: Iterable[str]) -> np.ndarray:
        """The provisional codes of ``keys`` (int64)."""
        return np.array([self.index.setdefault(k, len(self.index)) for k in keys], dtype=np.int64)

    def keys(self) -> list[str]:
        return list(self.index)


def _as_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _number_name(number: float) -> str:
    # 1, 1.0 and "01" are one label: integral values are named as integers.
    return str(int(number)) if number.is_integer() and abs(number) < 2**63 else repr(number)


def _label_names(keys: list[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """The sorted label names and, per provisional code, its final code.

    Numbers sort numerically ("2" < "10") and booleans as "false" < "true" (any case); anything
    else sorts as strings.
    """
    numbers = [_as_number(k) for k in keys]
    if all(n is not None for n in numbers):
        names_of = [_number_name(n) for n in numbers]  # type: ignore[arg-type]
        names = sorted(set(names_of), key=float)
    elif all(k.lower() in ("false", "true") for k in keys):
        names_of = [k.lower() for k in keys]
        names = sorted(set(names_of))
    else:
        names_of, names = keys, sorted(set(keys))
    position = {name: i for i, name in enumerate(names)}
    return tuple(names), np.array([position[n] for n in names_of], dtype=np.int64)


class _LabelColumn:
    """A label column read chunk by chunk into provisional codes, its missing labels tracked.

    A missing label (an empty cell, NaN, a null) is refused at once when labels are required.
    When they are optional, a column missing every label is no labels (a file to predict); one
    missing some is refused at its first missing row.
    """

    def __init__(self, source: _Source, column: str, labels: str) -> None:
        self.source, self.column, self.required = source, column, labels == "required"
        self.coder = _Coder()
        self.chunks: list[np.ndarray] = []
        self.first_missing: int | None = None
        self.seen = False  # a label was given

    def add(self, values: np.ndarray, first_row: int) -> None:
        """One chunk of labels: strings (stripped; "" is missing), numbers (NaN is missing) or booleans."""
        distinct, inverse = np.unique(values, return_inverse=True)
        if distinct.dtype.kind == "b":
            keys: list[str | None] = ["true" if v else "false" for v in distinct]
        elif distinct.dtype.kind in "iu":
            keys = [str(int(v)) for v in distinct]  # exact, even past float64's 2**53
        elif distinct.dtype.kind == "f":
            keys = [None if math.isnan(v) else _number_name(float(v)) for v in distinct]
        else:
            texts = [(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)).strip() for v in distinct]
            keys = [t or None for t in texts]
        self.add_keys(keys, inverse.reshape(-1), first_row)

    def add_keys(self, keys: list[str | None], indices: np.ndarray, first_row: int) -> None:
        """One chunk of labels as its distinct ``keys`` (None: missing) and each row's index into them."""
        index = self.coder.index
        lookup = np.array([-1 if k is None else index.setdefault(k, len(index)) for k in keys], dtype=np.int64)
        codes = lookup[indices]
        missing = codes < 0
        if missing.any() and self.first_missing is None:
            self.first_missing = first_row + int(np.flatnonzero(missing)[0])
        self.seen = self.seen or not missing.all()
        if self.first_missing is not None and (self.required or self.seen):
            self.fail_missing()
        self.chunks.append(codes)

    def add_nulls(self, nulls: np.ndarray, first_row: int) -> bool:
        """Record a chunk's nulls (Arrow's); True when the whole chunk is null and so is added."""
        if not nulls.any():
            return False
        if nulls.all():
            self.add_keys([None], np.zeros(len(nulls), dtype=np.int64), first_row)
            return True
        if self.first_missing is None:
            self.first_missing = first_row + int(np.flatnonzero(nulls)[0])
        self.fail_missing()  # some labels given, some not: refused whether labels are required or not

    def fail_missing(self) -> NoReturn:
        self.source.fail(
            f"row {self.first_missing}, {self.column}: the label is missing: give every row a label or drop the "
            "row (only a file to predict may lack labels, and then in every row)"
        )

    def finish(self) -> tuple[np.ndarray | None, tuple[str, ...]]:
        if self.first_missing is not None:
            return None, ()  # every label missing, and optional (else refused in add_keys)
        names, final = _label_names(self.coder.keys())
        if len(names) > MAX_LABELS:
            self.source.fail(
                f"{self.column} has {len(names)} distinct label values, more than {MAX_LABELS}: "
                "is it the label column? Labels are classes"
            )
        chunks, self.chunks = self.chunks, []  # the int64 codes are not kept beside the uint8 ones
        return np.concatenate([final[c].astype(np.uint8) for c in chunks]), names


def _finish_tokens(coder: _Coder) -> tuple[tuple[str, ...], np.ndarray]:
    """The tokens sorted, and per provisional code its code in that order (int32)."""
    keys = coder.keys()
    order = sorted(range(len(keys)), key=keys.__getitem__)
    final = np.empty(len(keys), dtype=np.int32)
    final[order] = np.arange(len(keys), dtype=np.int32)
    return tuple(keys[i] for i in order), final


# Padding: compact chunks to (N, L[, F]) ----------------------------------------------------------


def _own(array: np.ndarray) -> np.ndarray:
    """A chunk of compact steps as ``_Chunks`` keeps it: a large one copied into an anonymous memory
    map of its own, which goes back to the system the moment ``pad`` drops it.

    Kept as it comes, a chunk lives in the allocator's heap (numpy's, below glibc's mmap threshold) or
    is a view of Arrow's buffers (a whole batch's), and dropping it does not lower the process's
    memory: the compact steps and the padded array would then peak at twice the data.
    """
    if array.nbytes < _OWN_MAP_BYTES:
        return array
    own = np.frombuffer(mmap.mmap(-1, array.nbytes), dtype=array.dtype).reshape(array.shape)
    own[...] = array
    return own


@dataclass
class _Chunks:
    """A file read chunk by chunk: per chunk the lengths, the valid steps (compact), the labels."""

    lengths: list[np.ndarray] = field(default_factory=list)
    # float32 (steps, F) or int32 provisional token codes, each in memory of its own (_own)
    steps: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)  # int64 provisional label codes

    def pad(self, source: _Source, features: int, token_map: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Values padded to the longest row, and the lengths; the chunks are released as they go
        so that the peak is the compact steps plus the padded array."""
        rows, longest = _padded_bytes(source, self.lengths, features, 4)
        if token_map is None:
            values = np.zeros((rows, longest, features), dtype=np.float32)
        else:
            values = np.full((rows, longest), -1, dtype=np.int32)
        start, steps = 0, np.arange(longest)
        for i, lengths in enumerate(self.lengths):
            valid = steps < lengths[:, None]
            chunk = self.steps[i] if token_map is None else token_map[self.steps[i]]
            values[start : start + len(lengths)][valid] = chunk
            start += len(lengths)
            self.steps[i] = np.empty(0)
        return values, np.concatenate(self.lengths).astype(np.int64)


# .csv ---------------------------------------------------------------------------------------------


def _csv_bytes(size: int) -> int:
    """An upper bound of the memory a .csv file of ``size`` bytes needs: a value takes at least 2
    bytes of text (a digit and a separator) and 4 in memory; a row at least 4 bytes of text (a
    step, a comma, a label, a newline) and 8 (length) + 8 (label code) in memory."""
    return size // 2 * 4 + size // 4 * 16


def _read_csv(source: _Source, options: _Options, size: int) -> _Table:
    _check_memory(source, _csv_bytes(size), "reading it")
    limit = csv.field_size_limit()
    csv.field_size_limit(_CSV_FIELD_LIMIT)  # global to the csv module: restored below
    try:
        with open(source.path, encoding="utf-8-sig", newline="") as text:
            # strict: an unclosed quote or text after a closing quote is an error, not a guess.
            reader = csv.reader(text, strict=True)
            return _parse_csv(source, options, reader)
    except UnicodeDecodeError as error:
        source.fail(f"is not UTF-8 text ({error.reason} at byte {error.start} of a block): save it as UTF-8")
    except csv.Error as error:
        source.fail(f"is not valid CSV at line {reader.line_num} ({error}): check its quotes")
    finally:
        csv.field_size_limit(limit)


def _csv_columns(source: _Source, options: _Options, header: list[str]) -> tuple[int, int | None]:
    """The sequence and label columns' positions (label: None when optional and absent)."""
    names = [h.strip() for h in header]
    found = ", ".join(repr(n) for n in names)
    positions = []
    for column, needed in ((options.sequence_column, True), (options.label_column, options.labels == "required")):
        count = names.count(column)
        if count > 1:
            source.fail(f"column {column!r} appears {count} times in the header: rename the others")
        if count == 0 and needed:
            what = "sequence" if column == options.sequence_column else "label"
            flag = "sequence_column" if what == "sequence" else "label_column"
            source.fail(f"has no {what} column {column!r} (columns: {found}): name it with --data.{flag}")
        positions.append(names.index(column) if count else None)
    return positions[0], positions[1]  # type: ignore[return-value]


def _parse_csv(source: _Source, options: _Options, reader: Iterator[list[str]]) -> _Table:
    header = next(reader, None)
    if header is None:
        source.fail("is empty: give a header row and data rows")
    seq_at, label_at = _csv_columns(source, options, header)
    width = len(header)
    parser = _CsvSteps(source, options)
    chunks = _Chunks()
    label_column = _LabelColumn(source, f"column {options.label_column!r}", options.labels)
    seqs: list[str] = []
    labels: list[str] = []
    row = text = 0  # text: the chunk's characters of steps
    for fields in reader:
        if not fields:
            continue  # a blank line is no row
        if len(fields) != width:
            source.fail(
                f"row {row}{_csv_line(source, row)} has {len(fields)} fields but the header has {width}: "
                "quote a field that holds a comma"
            )
        seqs.append(cell := fields[seq_at])
        if label_at is not None:
            labels.append(fields[label_at])
        row += 1
        text += len(cell)
        if len(seqs) == _CHUNK_ROWS or text >= _CHUNK_BYTES:
            _csv_chunk(parser, chunks, seqs, label_column if label_at is not None else None, labels, row - len(seqs))
            seqs, labels, text = [], [], 0
    if seqs:
        _csv_chunk(parser, chunks, seqs, label_column if label_at is not None else None, labels, row - len(seqs))
    if row == 0:
        source.fail("has a header but no rows: give at least one row")
    label_codes, label_names = label_column.finish() if label_at is not None else (None, ())
    token_map = None
    if parser.tokens is not None:
        tokens, token_map = _finish_tokens(parser.tokens)
    values, lengths = chunks.pad(source, 1, token_map)
    return _Table(values, lengths, label_codes, label_names, tokens if token_map is not None else None)


def _csv_chunk(
    parser: _CsvSteps, chunks: _Chunks, seqs: list[str], label_column: _LabelColumn | None, labels: list[str], row: int
) -> None:
    parser.add(chunks, seqs, row)
    if label_column is not None:
        label_column.add(np.array(labels, dtype=str), row)


def _csv_line(source: _Source, row: int) -> str:
    """`` (line N)`` of data row ``row``, read again from the start: only for an error's message."""
    try:
        with open(source.path, encoding="utf-8-sig", newline="") as text:
            reader = csv.reader(text)
            next(reader, None)
            count = -1
            for fields in reader:
                count += bool(fields)
                if count == row:
                    return f" (line {reader.line_num})"
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return ""


class _CsvSteps:
    """Parses the sequence cells of a .csv file, a chunk at a time, into numbers or tokens."""

    def __init__(self, source: _Source, options: _Options) -> None:
        self.source = source
        self.options = options
        self.column = f"column {options.sequence_column!r}"
        self.numbers: bool | None = None if options.steps == "auto" else options.steps == "numbers"
        self.tokens: _Coder | None = None

    def add(self, chunks: _Chunks, seqs: list[str], first_row: int) -> None:
        counts = np.fromiter(map(len, map(str.split, seqs)), dtype=np.int64, count=len(seqs))
        if not counts.all():
            row = first_row + int(np.flatnonzero(counts == 0)[0])
            self.source.fail(
                f"row {row}{_csv_line(self.source, row)} has no steps ({self.column} is empty): "
                "give it at least one step or drop the row"
            )
        if self.numbers is None:
            self.numbers = self._first_row_is_numbers(seqs[0])
        if self.numbers:
            chunks.steps.append(_own(self._numbers(seqs, counts, first_row).reshape(-1, 1)))
        else:
            if self.tokens is None:
                self.tokens = _Coder()
            chunks.steps.append(_own(_token_codes(self.tokens, seqs)))
        chunks.lengths.append(counts)

    def _first_row_is_numbers(self, cell: str) -> bool:
        steps = cell.split()
        if all(_is_number(s) for s in steps):
            return True
        # "1,2,3" in one quoted cell is numbers with the wrong separator, not one token per row.
        spaced = cell.replace(",", " ").replace(";", " ").split()
        if len(spaced) > len(steps) and all(_is_number(s) for s in spaced):
            self.source.fail(
                f"row 0{_csv_line(self.source, 0)}, {self.column}: {_show(cell)} looks like numbers separated "
                "by ',' or ';': separate steps by spaces (or use --data.steps tokens if they are tokens)"
            )
        return False

    def _numbers(self, seqs: list[str], counts: np.ndarray, first_row: int) -> np.ndarray:
        """The chunk's steps as float32, parsed in C; only a chunk that fails is parsed again row by
        row, to find the first bad step."""
        values = _parse_floats(" ".join(seqs))
        if values is None or values.size != counts.sum():
            values = np.concatenate([self._row_numbers(cell, first_row + i) for i, cell in enumerate(seqs)])
        bad = ~np.isfinite(values)
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            ends = np.cumsum(counts)
            i = int(np.searchsorted(ends, at, side="right"))
            step = at - int(ends[i] - counts[i])
            self._refuse_value(first_row + i, step, seqs[i].split()[step])
        return values

    def _row_numbers(self, cell: str, row: int) -> np.ndarray:
        steps = cell.split()
        values = _parse_floats(" ".join(steps))  # joined by spaces: a tab or other blank is a separator too
        if values is not None and values.size == len(steps):
            return values
        step = next((i for i, s in enumerate(steps) if not _is_number(s)), None)
        if step is None:  # every step parses alone: take them so (numpy's parser is the one judge)
            return np.array([_parse_floats(s)[0] for s in steps], dtype=np.float32)  # type: ignore[index]
        hint = "use --data.steps tokens if the steps are tokens (event codes, letters)"
        if self.options.steps == "numbers":
            hint = "steps=numbers reads numbers only: fix the value, or use --data.steps tokens"
        self.source.fail(
            f"row {row}{_csv_line(self.source, row)}, {self.column}, step {step}: {_show(steps[step])} is not a number: "
            f"{hint}"
        )

    def _refuse_value(self, row: int, step: int, text: str) -> NoReturn:
        parsed = _parse_floats(text, np.float64)
        number = float(parsed[0]) if parsed is not None and parsed.size == 1 else math.nan
        what = _not_finite(number, shown=False)
        self.source.fail(
            f"row {row}{_csv_line(self.source, row)}, {self.column}, step {step}: {_show(text)} is {what}: "
            "steps must be finite numbers; fix the value or drop the row"
        )


def _parse_floats(text: str, dtype: type = np.float32) -> np.ndarray | None:
    """Whitespace-separated numbers, parsed by numpy in C; None when one is not a number.

    Recent numpy raises on text it cannot parse, older numpy warns and returns what it parsed:
    both are a failure here (and callers also compare the count with the steps they split).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            return np.fromstring(text, dtype=dtype, sep=" ")
    except (ValueError, DeprecationWarning):
        return None


def _not_finite(number: float, shown: bool) -> str:
    """Why a value is refused: NaN, infinite, or finite but past float32's range (shown: with its value)."""
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "infinite"
    return f"{number:g}, too large for float32" if shown else "too large for float32"


def _is_number(text: str) -> bool:
    values = _parse_floats(text)
    return values is not None and values.size == 1


def _token_codes(coder: _Coder, seqs: list[str]) -> np.ndarray:
    """Provisional token codes (int32) of a chunk's steps."""
    steps = list(chain.from_iterable(map(str.split, seqs)))
    if max(map(len, steps)) > 64:
        # A few long tokens would make the fixed-width string array below huge: code them one by one.
        return np.array([coder.index.setdefault(s, len(coder.index)) for s in steps], dtype=np.int32)
    distinct, inverse = np.unique(np.array(steps, dtype=str), return_inverse=True)
    return coder.add(distinct.tolist())[inverse.reshape(-1)].astype(np.int32)


# .npz ---------------------------------------------------------------------------------------------


def _read_npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """Shape, Fortran order and dtype of the .npy stream ``f``, left at its data (None: unknown header)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        return None
    return tuple(shape), fortran, dtype


def _npz_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """An array's shape and dtype from its .npy header, without reading the array (None: unknown header)."""
    with zf.open(member) as f:
        header = _read_npy_header(f)
    return None if header is None else (header[0], header[2])


def _npz_bytes(zf: zipfile.ZipFile, members: dict[str, str], x_key: str, x_shape: tuple[int, ...]) -> int:
    """The memory reading a .npz needs: the sequences as float32 (they are converted from the archive
    a block of rows at a time, whatever their dtype), the other arrays as stored, and the lengths."""
    others = sum(zf.getinfo(m).file_size for k, m in members.items() if k != x_key)
    return math.prod(x_shape) * 4 + others + x_shape[0] * 8


def _read_npz(source: _Source, options: _Options, size: int) -> _Table:
    x_key, y_key, len_key = options.npz_keys
    try:
        with zipfile.ZipFile(source.path) as zf:
            members = {name[:-4]: name for name in zf.namelist() if name.endswith(".npy")}
            if x_key not in members:
                source.fail(f"has no array {x_key!r} (arrays: {_listing(members)}): save the sequences as {x_key}")
            if y_key not in members and options.labels == "required":
                source.fail(
                    f"has no array {y_key!r} of labels (arrays: {_listing(members)}): save the labels as {y_key}"
                )
            used = {k: members[k] for k in (x_key, y_key, len_key) if k in members}
            headers = {k: _npz_header(zf, m) for k, m in used.items()}
            x_shape, _ = _check_npz_x(source, x_key, headers[x_key])
            _check_memory(source, _npz_bytes(zf, used, x_key, x_shape), "reading it")
        return _load_npz(source, options, used, x_shape)
    except _Refused:
        raise
    except zipfile.BadZipFile:
        source.fail("is not a .npz archive (a zip of .npy arrays): save it with np.savez(path, x=..., y=...)")
    except (OSError, ValueError, EOFError) as error:
        source.fail(f"cannot be read as .npz ({_one_line(error)}): save it again with np.savez")


def _listing(members: dict[str, str]) -> str:
    return ", ".join(repr(k) for k in members) or "none"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).splitlines()) or type(error).__name__


def _check_npz_x(source: _Source, key: str, header: Any) -> tuple[tuple[int, ...], np.dtype]:
    if header is None:
        source.fail(f"array {key!r} has an unknown .npy header version: save it again with np.savez")
    shape, dtype = header
    _check_npz_dtype(source, key, dtype, "biuf", "numbers")
    if len(shape) not in (2, 3):
        source.fail(f"array {key!r} has shape {shape}: it must be (rows, steps) or (rows, steps, features)")
    if shape[0] == 0:
        source.fail(f"array {key!r} has no rows: give at least one")
    if shape[1] == 0 or (len(shape) == 3 and shape[2] == 0):
        source.fail(f"array {key!r} has shape {shape}: every row needs at least one step of one feature")
    return shape, dtype


def _check_npz_dtype(source: _Source, key: str, dtype: np.dtype, kinds: str, what: str) -> None:
    if dtype.hasobject:
        source.fail(
            f"array {key!r} holds Python objects (dtype object), which lightsum does not unpickle: save {what} "
            "as a numeric or string array"
        )
    if dtype.kind in "US" and "U" not in kinds:
        source.fail(f"array {key!r} holds strings: tokens cannot be read from .npz; save them as .csv or .parquet")
    if dtype.kind not in kinds:
        source.fail(f"array {key!r} has dtype {dtype}: it must hold {what}")


def _load_npz(source: _Source, options: _Options, used: dict[str, str], shape: tuple[int, ...]) -> _Table:
    x_key, y_key, len_key = options.npz_keys
    rows = shape[0]
    with np.load(source.path, allow_pickle=False) as npz:
        lengths = _npz_lengths(source, len_key, npz[len_key], shape) if len_key in used else None
        y = npz[y_key] if y_key in used else None
    codes, names = _npz_labels(source, y_key, y, rows, options.labels) if y is not None else (None, ())
    with zipfile.ZipFile(source.path) as zf:
        values = _npz_values(source, options.npz_keys, _npz_blocks(zf, used[x_key]), shape, lengths)
    if lengths is None:
        lengths = np.full(rows, values.shape[1], dtype=np.int64)
    return _Table(values, lengths, codes, names, None)


def _npz_blocks(zf: zipfile.ZipFile, member: str) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of an archive's array, a chunk of rows (``_chunk_rows``) at a time in its stored dtype,
    read from the archive as they are needed: the whole array (float64, say) is never in memory
    beside its float32 conversion."""
    with zf.open(member) as f:
        header = _read_npy_header(f)
        if header is None:
            raise ValueError(f"{member} has an unknown .npy header version")
        shape, fortran, dtype = header
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        rows = _chunk_rows(row_bytes)
        if fortran:  # stored column by column: rows cannot be read a block at a time
            whole = np.frombuffer(f.read(), dtype=dtype).reshape(shape, order="F")
            for start in range(0, shape[0], rows):
                yield start, whole[start : start + rows]
            return
        for start in range(0, shape[0], rows):
            count = min(rows, shape[0] - start)
            data = f.read(count * row_bytes)
            if len(data) != count * row_bytes:
                raise ValueError(f"{member} is truncated")
            yield start, np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:])


def _npz_lengths(source: _Source, key: str, lengths: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    _check_npz_dtype(source, key, lengths.dtype, "iu", "integer lengths")
    if lengths.shape != (shape[0],):
        source.fail(f"array {key!r} has shape {lengths.shape}: it must be ({shape[0]},), one length a row")
    bad = (lengths < 1) | (lengths > shape[1])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        source.fail(
            f"array {key!r}, row {row}: length {int(lengths[row])} is outside [1, {shape[1]}] "
            "(the steps of the sequences' array)"
        )
    return lengths.astype(np.int64)


def _npz_labels(
    source: _Source, key: str, y: np.ndarray, rows: int, labels: str
) -> tuple[np.ndarray | None, tuple[str, ...]]:
    _check_npz_dtype(source, key, y.dtype, "biufUS", "labels (integers, booleans or strings)")
    if y.ndim != 1:
        hint = f": save {key}.ravel()" if y.size == rows else ""
        source.fail(f"array {key!r} has shape {y.shape}: labels must be ({rows},), one a row{hint}")
    if len(y) != rows:
        source.fail(f"array {key!r} has {len(y)} labels but the sequences have {rows} rows: one label a row")
    column = _LabelColumn(source, f"array {key!r}", labels)
    column.add(y, 0)
    return column.finish()


def _npz_values(
    source: _Source,
    keys: tuple[str, ...],
    blocks: Iterable[tuple[int, np.ndarray]],
    shape: tuple[int, ...],
    lengths: np.ndarray | None,
) -> np.ndarray:
    """The sequences' ``blocks`` of rows converted into one float32 (N, L, F) array, padding (past
    ``lengths``) zeroed, refused at the first valid step that is NaN, infinite, or too large for float32."""
    values = np.empty((shape[0], shape[1], math.prod(shape[2:])), dtype=np.float32)
    steps = np.arange(values.shape[1])
    for start, x in blocks:
        block = values[start : start + len(x)]
        with np.errstate(over="ignore"):  # a value float32 cannot hold becomes inf: refused below, by row
            block[...] = x.reshape(block.shape)
        if lengths is not None:
            # Padding may hold anything (NaN marks it in many exports): it is 0.0 here, and not checked.
            block[steps >= lengths[start : start + len(x), None]] = 0.0
        bad = ~np.isfinite(block)
        if bad.any():
            row, step, feature = (int(i) for i in np.argwhere(bad)[0])
            original = float(x.reshape(block.shape)[row, step, feature])
            what = _not_finite(original, shown=True)
            at = f", feature {feature}" if values.shape[2] > 1 else ""
            hint = f"; if it marks padding, save the rows' lengths as {keys[2]!r}" if lengths is None else ""
            source.fail(
                f"array {keys[0]!r}, row {start + row}, step {step}{at}: the value is {what}: steps must be finite "
                f"numbers; fix the value or drop the row{hint}"
            )
    return values


# .parquet -----------------------------------------------------------------------------------------


def _pyarrow(source: _Source) -> Any:
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError:
        source.fail(_NO_PYARROW)
    return pyarrow


def _parquet_values(metadata: Any, column: str) -> int:
    """The values (leaves) of a .parquet file's ``column``, counted from its column chunks."""
    values = 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            if chunk.path_in_schema == column or chunk.path_in_schema.startswith(column + "."):
                values += chunk.num_values
    return values


def _parquet_bytes(metadata: Any, column: str) -> int:
    """The memory reading a .parquet file needs, from its metadata: 4 bytes for each value of the
    sequence column (the compact steps), 16 a row (length, label code). Padding to the longest row
    is checked again once the lengths are known."""
    return _parquet_values(metadata, column) * 4 + metadata.num_rows * 16


def _read_parquet(source: _Source, options: _Options, size: int) -> _Table:
    pa = _pyarrow(source)
    try:
        # Read the file a buffer at a time, not each row group's column chunks whole (pre_buffer, and
        # buffer_size=0, pyarrow's defaults): a row group is a million rows by default.
        parquet = pa.parquet.ParquetFile(source.path, buffer_size=_PARQUET_BUFFER, pre_buffer=False)
    except (pa.ArrowException, OSError) as error:
        source.fail(f"is not a Parquet file ({_one_line(error)}): save it with pyarrow or pandas.to_parquet")
    schema = parquet.schema_arrow
    found = ", ".join(repr(n) for n in schema.names)
    seq, label = options.sequence_column, options.label_column
    if seq not in schema.names:
        source.fail(f"has no sequence column {seq!r} (columns: {found}): name it with --data.sequence_column")
    if label not in schema.names and options.labels == "required":
        source.fail(f"has no label column {label!r} (columns: {found}): name it with --data.label_column")
    if parquet.metadata.num_rows == 0:
        source.fail("has no rows: give at least one")
    _check_memory(source, _parquet_bytes(parquet.metadata, seq), "reading it")
    steps = _ParquetSteps(source, options, schema.field(seq).type, pa)
    columns = [seq] + ([label] if label in schema.names else [])
    chunks, row = _Chunks(), 0
    labels = _LabelColumn(source, f"column {label!r}", options.labels) if label in schema.names else None
    try:
        # Batches of about _PARQUET_BATCH_BYTES at 8 bytes a value (4-8 in Arrow, and as much again
        # of repetition and definition levels while it decodes them), and the pool's freed memory
        # given back every _CHUNK_BYTES of them: its allocator otherwise keeps several times a batch.
        # One thread: what Arrow's pool threads allocate, release_unused() does not give back.
        values_per_row = _parquet_values(parquet.metadata, seq) / parquet.metadata.num_rows
        rows = _chunk_rows(8 * values_per_row, _PARQUET_BATCH_BYTES)
        release = max(1, _CHUNK_BYTES // _PARQUET_BATCH_BYTES)
        for i, batch in enumerate(parquet.iter_batches(batch_size=rows, columns=columns, use_threads=False)):
            steps.add(chunks, batch.column(seq), row)
            if labels is not None:
                _parquet_labels(labels, batch.column(label), row, pa)
            row += batch.num_rows
            if i % release == release - 1:
                pa.default_memory_pool().release_unused()
        batch = None  # the last batch's buffers go back to the pool with the others
    except pa.ArrowException as error:
        source.fail(f"cannot be read ({_one_line(error)}): save it again")
    pa.default_memory_pool().release_unused()  # the pool keeps freed batches' memory otherwise
    codes, names = labels.finish() if labels is not None else (None, ())
    token_map = None
    if steps.tokens is not None:
        tokens, token_map = _finish_tokens(steps.tokens)
    values, lengths = chunks.pad(source, steps.features or 1, token_map)
    return _Table(values, lengths, codes, names, tokens if token_map is not None else None)


def _locate(lengths: np.ndarray, at: int) -> tuple[int, int]:
    """(row, step) of the ``at``-th step of rows with these lengths."""
    ends = np.cumsum(lengths)
    row = int(np.searchsorted(ends, at, side="right"))
    return row, at - int(ends[row] - lengths[row])


class _ParquetSteps:
    """Converts batches of a Parquet list column to compact steps with Arrow, never per value in Python."""

    def __init__(self, source: _Source, options: _Options, kind: Any, pa: Any) -> None:
        self.source, self.pa = source, pa
        self.column = f"column {options.sequence_column!r}"
        types = pa.types
        if not (types.is_list(kind) or types.is_large_list(kind) or types.is_fixed_size_list(kind)):
            source.fail(
                f"{self.column} has type {kind}: it must be a list of numbers, of lists of numbers, or of strings"
            )
        item = kind.value_type
        if types.is_dictionary(item):
            item = item.value_type
        self.nested = types.is_list(item) or types.is_large_list(item) or types.is_fixed_size_list(item)
        leaf = item.value_type if self.nested else item
        numeric = types.is_integer(leaf) or types.is_floating(leaf) or types.is_boolean(leaf)
        text = types.is_string(leaf) or types.is_large_string(leaf)
        if not (numeric or text) or (self.nested and not numeric):
            source.fail(f"{self.column} has type {kind}: steps must be numbers, lists of numbers, or strings")
        wanted = options.steps if options.steps != "auto" else ("numbers" if numeric else "tokens")
        if wanted == "tokens" and self.nested:
            source.fail(f"{self.column} holds lists of numbers a step: they cannot be tokens; use --data.steps numbers")
        self.tokens: _Coder | None = _Coder() if wanted == "tokens" else None
        self.features: int | None = None if self.nested else 1

    def add(self, chunks: _Chunks, column: Any, first_row: int) -> None:
        self._no_nulls(column, first_row, lambda i: (i, None))
        lengths = self.pa.compute.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        if not lengths.all():
            row = first_row + int(np.flatnonzero(lengths == 0)[0])
            self.source.fail(
                f"row {row} has no steps ({self.column} is an empty list): give it at least one step or drop the row"
            )
        steps = column.flatten()
        self._no_nulls(steps, first_row, lambda i: _locate(lengths, i))
        # A copy of our own: a view would keep the batch's Arrow buffers (and the pool's memory) alive.
        if self.tokens is not None:
            chunks.steps.append(_own(self._token_codes(steps, lengths, first_row)))
        else:
            chunks.steps.append(_own(self._numbers(steps, lengths, first_row)))
        chunks.lengths.append(lengths)

    def _no_nulls(self, array: Any, first_row: int, where: Any) -> None:
        if array.null_count:
            row, step = where(int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0]))
            at = f"row {first_row + row}, {self.column}" + (f", step {step}" if step is not None else "")
            self.source.fail(f"{at} is null: fill it or drop the row")

    def _numbers(self, steps: Any, lengths: np.ndarray, first_row: int) -> np.ndarray:
        features = 1
        if self.nested:
            counts = self.pa.compute.list_value_length(steps).to_numpy(zero_copy_only=False)
            if self.features is None:
                self.features = int(counts[0])
                if self.features == 0:
                    self.source.fail(
                        f"row {first_row}, {self.column}, step 0 has no features: give each step at least one"
                    )
            ragged = counts != self.features
            if ragged.any():
                row, step = _locate(lengths, int(np.flatnonzero(ragged)[0]))
                self.source.fail(
                    f"row {first_row + row}, {self.column}, step {step} has {int(counts[ragged][0])} features but "
                    f"the first step has {self.features}: ragged steps; give every step the same number of features"
                )
            features = self.features
            steps = steps.flatten()
            self._no_nulls(steps, first_row, lambda i: _locate(lengths, i // features))
        values = self._as_float32(steps, lengths, first_row)
        bad = ~np.isfinite(values)
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            row, step = _locate(lengths, at // features)
            original = float(steps[at].as_py())
            what = _not_finite(original, shown=True)
            feature = f", feature {at % features}" if self.nested else ""
            self.source.fail(
                f"row {first_row + row}, {self.column}, step {step}{feature}: the value is {what}: steps must be "
                "finite numbers; fix the value or drop the row"
            )
        return values.reshape(-1, features)

    def _as_float32(self, steps: Any, lengths: np.ndarray, first_row: int) -> np.ndarray:
        pa = self.pa
        if pa.types.is_dictionary(steps.type):
            steps = steps.dictionary_decode()
        if pa.types.is_string(steps.type) or pa.types.is_large_string(steps.type):
            try:  # steps=numbers over a column of strings: they must all be numbers
                steps = pa.compute.cast(steps, pa.float64())
            except pa.ArrowException:
                at = next(i for i, s in enumerate(steps.to_pylist()) if not _is_number(s.strip()))
                row, step = _locate(lengths, at)
                self.source.fail(
                    f"row {first_row + row}, {self.column}, step {step}: {_show(steps[at].as_py())} is not a number: "
                    "use --data.steps tokens if the steps are tokens"
                )
        with np.errstate(over="ignore"):  # too large for float32: inf, refused by the caller with its row
            return np.asarray(steps.to_numpy(zero_copy_only=False), dtype=np.float32)

    def _token_codes(self, steps: Any, lengths: np.ndarray, first_row: int) -> np.ndarray:
        pa = self.pa
        if not pa.types.is_dictionary(steps.type) and not (
            pa.types.is_string(steps.type) or pa.types.is_large_string(steps.type)
        ):
            steps = pa.compute.cast(steps, pa.string())  # steps=tokens over numbers: "42" is a token
        distinct, indices = _dictionary(steps, pa)
        if "" in distinct:
            row, step = _locate(lengths, int(np.flatnonzero(indices == distinct.index(""))[0]))
            self.source.fail(
                f"row {first_row + row}, {self.column}, step {step} is an empty token: fill it or drop the row"
            )
        return self.tokens.add(distinct)[indices].astype(np.int32)  # type: ignore[union-attr]


def _dictionary(array: Any, pa: Any) -> tuple[list[str], np.ndarray]:
    """An Arrow array (without nulls) as its distinct values (strings) and each value's index into them."""
    encoded = array if pa.types.is_dictionary(array.type) else array.dictionary_encode()
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    values = encoded.dictionary.to_pylist()
    if pa.types.is_dictionary(array.type):
        # A stored dictionary (a pandas categorical) may hold values no row has: they are not the file's.
        used, indices = np.unique(indices, return_inverse=True)
        values = [values[i] for i in used]
    return [str(v) for v in values], indices.reshape(-1)


def _parquet_labels(column: _LabelColumn, labels: Any, first_row: int, pa: Any) -> None:
    """One batch of a Parquet label column: strings through Arrow's dictionary, numbers through numpy."""
    if column.add_nulls(labels.is_null().to_numpy(zero_copy_only=False), first_row):
        return
    kind = labels.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        keys, indices = _dictionary(labels, pa)
        column.add_keys([k.strip() or None for k in keys], indices, first_row)
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        column.add(labels.to_numpy(zero_copy_only=False), first_row)
    else:
        column.source.fail(f"{column.column} has type {kind}: labels must be integers, booleans or strings")


# The cache ----------------------------------------------------------------------------------------

_ARRAYS = ("values", "lengths", "labels")


def cache_folder(path: str | os.PathLike) -> Path:
    """Where the cache of ``path`` is: ``<file name>.lightsum/`` beside it."""
    path = Path(path)
    return path.with_name(path.name + CACHE_SUFFIX)


def _meta(options: _Options, stat: os.stat_result, table: _Table) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "source": {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "options": options.as_json(),
        "steps": "numbers" if table.tokens is None else "tokens",
        "shape": list(table.values.shape),
        "labels": table.label_codes is not None,
        "label_names": list(table.label_names),
        "tokens": None if table.tokens is None else list(table.tokens),
    }


def _open_cache(source: _Source, options: _Options, stat: os.stat_result) -> SequenceFile | None:
    """The cached arrays as read-only memory maps, or None when there is no cache or it is stale
    (another source or other options) or damaged: it is then rebuilt, never trusted."""
    folder = cache_folder(source.path)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if (
            meta["version"] != CACHE_VERSION
            or meta["source"] != {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            or meta["options"] != options.as_json()
        ):
            return None
        return _open_arrays(source, folder, meta)
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None


def _open_arrays(source: _Source, folder: Path, meta: dict[str, Any]) -> SequenceFile | None:
    shape = tuple(meta["shape"])
    tokens = meta["steps"] == "tokens"
    values = np.load(folder / "values.npy", mmap_mode="r")  # a truncated file fails here
    lengths = np.load(folder / "lengths.npy", mmap_mode="r")
    codes = np.load(folder / "labels.npy", mmap_mode="r") if meta["labels"] else None
    names = tuple(str(n) for n in meta["label_names"])
    expected = [(values, shape, np.int32 if tokens else np.float32), (lengths, shape[:1], np.int64)]
    if codes is not None:
        expected.append((codes, shape[:1], np.uint8))
    if any(a.shape != s or a.dtype != np.dtype(d) for a, s, d in expected):
        return None
    # Cheap sanity of the small arrays; the values themselves are as written (rename is atomic).
    if lengths.min() < 1 or lengths.max() > shape[1] or (codes is not None and codes.max() >= len(names)):
        return None
    token_names = tuple(str(t) for t in meta["tokens"]) if tokens else None
    return SequenceFile(source.path, values, lengths, codes, names, token_names)


def _cache_table(source: _Source, options: _Options, stat: os.stat_result, table: _Table) -> SequenceFile:
    """Write ``table`` into the cache and return memory maps of it; when the cache cannot be
    written (a read-only folder, a full disk) or the source changed while it was read, the table
    itself."""
    target = cache_folder(source.path)
    parent = target.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return _as_file(source, table)
    _remove_orphans(parent, Path(source.path).name)
    meta = _meta(options, stat, table)
    try:
        partial = Path(tempfile.mkdtemp(prefix=f".{Path(source.path).name}{_PARTIAL}", dir=parent))
    except OSError:
        return _as_file(source, table)
    try:
        arrays = {"values": table.values, "lengths": table.lengths, "labels": table.label_codes}
        for name, array in arrays.items():
            if array is not None:
                np.save(partial / f"{name}.npy", array)
        (partial / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        after = os.stat(source.path)
        if (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            raise OSError("the source changed while it was read")
        installed = _install(partial, target, lambda: _open_cache(source, options, stat))
    except OSError:
        installed = None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    if installed is None:
        return _as_file(source, table)
    opened = _open_cache(source, options, stat)
    return opened if opened is not None else _as_file(source, table)


def _install(partial: Path, target: Path, valid: Any) -> bool | None:
    """Rename the finished ``partial`` folder to ``target``, atomically.

    When ``target`` exists meanwhile: if ``valid()`` (another process built the same cache first)
    it is kept and ``partial`` is dropped by the caller; if not (a stale or damaged cache) it is
    renamed aside, then removed. True when a good cache is in place, None when none could be.
    """
    for _ in range(3):  # another process may swap the target between our steps: try again
        try:
            os.rename(partial, target)
            return True
        except OSError:
            if not target.is_dir() or target.is_symlink():
                return None  # not a cache folder of ours: leave it alone
            if valid() is not None:
                return True
            aside = target.with_name(f".{target.name}.stale-{os.getpid()}-{time.monotonic_ns()}")
            try:
                os.rename(target, aside)
            except OSError:
                continue
            shutil.rmtree(aside, ignore_errors=True)
    return None


def _remove_orphans(parent: Path, name: str) -> None:
    """Remove partial and stale cache folders that killed processes left (old enough not to be in use)."""
    now = time.time()
    try:
        prefixes = (f".{name}{_PARTIAL}", f".{name}{CACHE_SUFFIX}.stale-")
        candidates = [p for p in parent.iterdir() if p.name.startswith(prefixes)]
    except OSError:
        return
    for partial in candidates:
        try:
            if now - partial.stat().st_mtime > _ORPHAN_AGE_S:
                shutil.rmtree(partial, ignore_errors=True)
        except OSError:
            pass
