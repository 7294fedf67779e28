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

This package knows nothing about torch or Lightning: numpy, the standard library, and pyarrow for
Parquet (optional: ``pip install 'lightsum[parquet]'``, imported only when a .parquet file is read).

Its modules, each importing only from those above it:

- ``table``: ``SequenceFile``, the public constants and types, and what the readers share: the file
  and its refusals (``_Source``), the options, the parsed arrays (``_Table``), memory checks, label
  and token coding, chunks and their padding, number parsing;
- ``csv_reader``, ``npz_reader``, ``parquet_reader``: one reader a format (``_read_csv``, ...);
- ``cache``: the cache folder (``cache_folder``): opened, built, installed atomically;
- ``read``: ``read_sequence_file`` itself: checks the options and the file, then the cache or a reader.

This module re-exports the public API only.
"""

from lightsum.data.files.cache import cache_folder
from lightsum.data.files.read import read_sequence_file
from lightsum.data.files.table import (
    CACHE_SUFFIX,
    CACHE_VERSION,
    FORMATS,
    MAX_LABELS,
    Labels,
    SequenceFile,
    Steps,
)

__all__ = [
    "CACHE_SUFFIX",
    "CACHE_VERSION",
    "FORMATS",
    "MAX_LABELS",
    "Labels",
    "SequenceFile",
    "Steps",
    "cache_folder",
    "read_sequence_file",
]
