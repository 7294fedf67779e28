"""The cache beside a sequence file, ``<file name>.lightsum/``: opened as read-only memory maps
when it matches the file and the options, else built in a partial folder and installed atomically
(a rename), with the partial and stale folders of killed writers removed."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lightsum.data.files.table import (
    CACHE_SUFFIX,
    CACHE_VERSION,
    SequenceFile,
    _as_file,
    _Options,
    _Source,
    _Table,
)

_ORPHAN_AGE_S = 24 * 3600  # a partial cache folder this old is a killed writer's, not a slow one's
_PARTIAL = ".lightsum-partial-"  # name part of the temporary folder a cache is built in

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
