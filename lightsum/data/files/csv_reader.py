"""Reading a .csv file: a label column and a sequence column of whitespace-separated steps
(numbers or tokens), parsed a chunk of rows at a time."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from itertools import chain
from typing import NoReturn

import numpy as np

from lightsum.data.files.table import (
    _CHUNK_BYTES,
    _CHUNK_ROWS,
    _check_memory,
    _Chunks,
    _Coder,
    _finish_tokens,
    _is_number,
    _LabelColumn,
    _not_finite,
    _Options,
    _own,
    _parse_floats,
    _show,
    _Source,
    _Table,
)

_CSV_FIELD_LIMIT = 2**31 - 1  # the csv module's default (128 KiB a field) is short for a long sequence


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


def _token_codes(coder: _Coder, seqs: list[str]) -> np.ndarray:
    """Provisional token codes (int32) of a chunk's steps."""
    steps = list(chain.from_iterable(map(str.split, seqs)))
    if max(map(len, steps)) > 64:
        # A few long tokens would make the fixed-width string array below huge: code them one by one.
        return np.array([coder.index.setdefault(s, len(coder.index)) for s in steps], dtype=np.int32)
    distinct, inverse = np.unique(np.array(steps, dtype=str), return_inverse=True)
    return coder.add(distinct.tolist())[inverse.reshape(-1)].astype(np.int32)
