"""Folders lightsum writes into, checked before anything runs: a command that could not write its
run folder stops in one line instead of with a traceback once training has started."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from lightsum.errors import CannotWrite

# The commands that log into a run folder (predict writes one file, checked by its own writer).
LOGGING_COMMANDS = ("fit", "validate", "test")


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Refuse a folder lightsum would create or write files in, before anything is written.

    ``path`` need not exist: the nearest part of it that does must be a folder this process may
    write into. Nothing is created. Permission comes from ``os.access``, which, as the system
    does, lets root write into a folder whatever its mode bits, but not on a read-only filesystem.

    Args:
        path: the folder.
        what: what it is, to open the message (``trainer.logger.init_args.save_dir``).

    Raises:
        ValueError: a part of ``path`` is a file (or a fifo, a device, a broken link), not a folder.
        CannotWrite: no write permission in that folder, or it is on a read-only filesystem.
    """
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if os.path.lexists(p))
    shown = Path.cwd() if existing == Path(".") else existing
    inside = "" if existing == path else f" in {shown}"  # the part of path that blocks it
    if not existing.is_dir():
        kind = (
            "a file, not a folder"
            if existing.is_file()
            else "a broken link"
            if not existing.exists()
            else "not a folder"
        )
        raise ValueError(
            f"{what}: {path} is {kind}" if existing == path else f"{what}: cannot write {path}: {shown} is {kind}"
        )
    if os.access(existing, os.W_OK | os.X_OK):
        return
    if read_only(existing):
        raise CannotWrite(path, OSError(errno.EROFS, f"read-only filesystem{inside}"), what)
    raise CannotWrite(path, OSError(errno.EACCES, f"no write permission{inside}"), what)


def read_only(folder: Path) -> bool:
    """Whether ``folder`` is on a filesystem mounted read-only (False where that cannot be told)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):  # no statvfs (Windows), or the folder cannot be examined
        return False


def check_run_folder(config: Any, command: str) -> None:
    """Refuse, before anything runs, a run folder that ``command`` could not log into.

    ``config`` is the command's parsed config, once the run folder is settled (a resumed or requeued
    fit's version, the checkpoint's run folder for ``validate`` and ``test``). The folder is
    ``<save_dir>/<name>/<version>`` of the logger, or ``<save_dir>/<name>`` where Lightning picks a
    new version; ``fit`` also writes into ``checkpoints/`` under it.

    Raises:
        ValueError, CannotWrite: as ``check_writable``.
    """
    args = getattr(config.trainer.get("logger"), "init_args", None)
    if command not in LOGGING_COMMANDS or args is None:
        return
    folder = Path(args.get("save_dir") or ".") / (args.get("name") or "")
    version = args.get("version")
    if version is not None:
        folder /= version if isinstance(version, str) else f"version_{version}"
    what = "trainer.logger.init_args.save_dir" if command == "fit" else command
    check_writable(folder, what)
    if command == "fit":
        check_writable(folder / "checkpoints", what)
