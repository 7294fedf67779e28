"""Reading a .parquet file with pyarrow (imported only when one is read): a label column and a
list column of steps (numbers, lists of numbers, or strings), converted a batch at a time with Arrow."""

from __future__ import annotations

from typing import Any

import numpy as np

from lightsum.data.files.table import (
    _CHUNK_BYTES,
    _check_memory,
    _chunk_rows,
    _Chunks,
    _Coder,
    _finish_tokens,
    _is_number,
    _LabelColumn,
    _not_finite,
    _one_line,
    _Options,
    _own,
    _show,
    _Source,
    _Table,
)

# Arrow's Parquet reader holds several times a batch while it decodes one (levels, buffers grown by
# doubling, its allocator's slack): its batches are smaller, a few hundred kB of values.
_PARQUET_BATCH_BYTES = 1 << 18
_PARQUET_BUFFER = 1 << 20  # bytes read from a .parquet file at a time (pyarrow's default reads a column chunk whole)
_NO_PYARROW = "reading .parquet needs pyarrow: pip install 'lightsum[parquet]'"


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
