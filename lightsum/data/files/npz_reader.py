"""Reading a .npz file: the sequences' array (N, L) or (N, L, F), the labels' and the optional
lengths', checked from their .npy headers and converted a block of rows at a time."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from lightsum.data.files.table import (
    _check_memory,
    _chunk_rows,
    _LabelColumn,
    _not_finite,
    _one_line,
    _Options,
    _Refused,
    _Source,
    _Table,
)

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
