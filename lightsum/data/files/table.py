"""The arrays a sequence file is read into, and what the three readers share.

``SequenceFile`` (what ``read_sequence_file`` returns) and the reading's types: the file and its
user-facing refusals (``_Source``, ``_Refused``), the options (``_Options``), the parsed arrays before
they are cached (``_Table``); the memory checks; label and token coding (distinct strings to codes);
the chunks a file is read in and their padding; and the number parsing and message helpers the
.csv, .npz and .parquet readers have in common.
"""

from __future__ import annotations

import math
import mmap
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
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
# A chunk this large is kept in a memory map of its own (see _own): well below a chunk's steps
# (hundreds of kB: _CHUNK_BYTES of text or stored rows, _PARQUET_BATCH_BYTES / 2), so every chunk of a large file is.
_OWN_MAP_BYTES = 1 << 16


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


# Numbers in text, and messages: shared by the readers ---------------------------------------------


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


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).splitlines()) or type(error).__name__
