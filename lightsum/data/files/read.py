"""``read_sequence_file``: check the options and the file, then open its cache or read it with the
reader of its format (and cache it)."""

from __future__ import annotations

import os

from lightsum.data.files.cache import _cache_table, _open_cache
from lightsum.data.files.csv_reader import _read_csv
from lightsum.data.files.npz_reader import _read_npz
from lightsum.data.files.parquet_reader import _read_parquet
from lightsum.data.files.table import (
    FORMATS,
    Labels,
    SequenceFile,
    Steps,
    _as_file,
    _Options,
    _Source,
    _Table,
)


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
