"""Crash-safe writes: a temporary file beside the target, fsynced, then renamed over it.

A kill at any moment leaves the target either as it was or complete, never partial. Checkpoints
(``AtomicCheckpointIO``) and predictions (``callbacks.predictions``) are written this way.
"""

from __future__ import annotations

import glob
import io
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from lightsum.errors import CannotWrite


def _partial_name(name: str, pid: str) -> str:
    # The host is in the name because a pid names a process on one host only (shared folders).
    return f".{name}.partial-{socket.gethostname()}-{pid}"


class AtomicFile:
    """A file written under ``.<name>.partial-<host>-<pid>`` and renamed to ``target`` on ``commit()``.

    As a context manager: commits when the block ends normally, removes the partial file when it
    raises. ``open()`` first removes the partial files that killed writers left beside the target.
    An OS error (a full disk, no permission) in ``open``, ``write`` or ``commit`` removes the
    partial file and raises ``CannotWrite`` naming the target: the target stays as it was.

    Args:
        target: the file to write.
        mode: ``"wb"`` or ``"w"``.
        orphans: whose partial files ``open()`` removes: the target's (default), or ``"*"`` for
            every name in a folder lightsum owns (a checkpoint folder).
    """

    def __init__(self, target: str | os.PathLike, mode: str = "wb", orphans: str | None = None) -> None:
        self.target = Path(target)
        self.mode = mode
        self.orphans = orphans or self.target.name
        self.partial = self.target.with_name(_partial_name(self.target.name, str(os.getpid())))
        self.file: IO[Any] | None = None

    def open(self) -> IO[Any]:
        with self._failing_cleanly():
            self.target.parent.mkdir(parents=True, exist_ok=True)
            remove_orphans(self.target.parent, self.orphans)
            self.partial.unlink(missing_ok=True)  # an earlier process's, with this pid (pids are reused)
            self.file = open(self.partial, self.mode, opener=_private_new_file)
            keep_permissions(self.target, self.partial)
        return self.file

    def write(self, data: Any) -> None:
        with self._failing_cleanly():
            self.file.write(data)

    def commit(self) -> None:
        """fsync, rename over the target, fsync the folder (so the rename survives a power cut)."""
        assert self.file is not None, "commit() before open()"
        with self._failing_cleanly():
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None
            os.replace(self.partial, self.target)
            folder = os.open(self.target.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    @contextmanager
    def _failing_cleanly(self) -> Iterator[None]:
        try:
            yield
        except CannotWrite:
            raise
        except OSError as err:
            self.abort()
            raise CannotWrite(self.target, err) from None

    def abort(self) -> None:
        """Close and remove the partial file; the target stays as it was."""
        if self.file is not None:
            with suppress(OSError):  # closing flushes, which fails again on a full disk
                self.file.close()
            self.file = None
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        self.open()
        return self

    def __exit__(self, kind: type | None, *_: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


def _private_new_file(path: str, flags: int) -> int:
    # Created here, readable by this user only until keep_permissions sets its mode, and never
    # opened through a link that someone planted under the partial file's (predictable) name.
    return os.open(path, flags | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)


def keep_permissions(target: Path, partial: Path) -> None:
    """Give the file that will replace ``target`` its mode (and, where allowed, its owner): a
    private output stays private after the rename; a new one gets the mode the umask gives."""
    try:
        status = target.stat()
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)
        return
    os.chmod(partial, stat.S_IMODE(status.st_mode))
    with suppress(PermissionError):  # only root may give a file away
        if (status.st_uid, status.st_gid) != (os.getuid(), os.getgid()):
            os.chown(partial, status.st_uid, status.st_gid)


def remove_orphans(folder: Path, name: str = "*") -> None:
    """Delete the partial files of ``name`` (any name by default) that writers on this host left
    when they were killed: those whose process no longer exists. Other hosts' files are left alone
    (their processes cannot be seen from here)."""
    names = name if name == "*" else glob.escape(name)
    for partial in folder.glob(f".{names}.partial-{glob.escape(socket.gethostname())}-*"):  # _partial_name's form
        pid = partial.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0 only asks whether the process exists
        except ProcessLookupError:
            partial.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, another user's


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader and writer, reading through ``lightsum.checkpoints`` and writing
    through ``AtomicFile``.

    Every checkpoint Lightning restores (``--ckpt_path`` of any kind, a requeued job's) is read with
    torch's weights-only unpickler and checked whole, whatever ``--weights_only`` or the environment
    says. (Lightning's own local save stages the bytes in the system temp folder and moves them;
    across filesystems that move is a copy, and nothing is fsynced.) Remote URLs are written by
    Lightning's writer and read by its reader, with weights_only forced on.
    """

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        from lightsum.checkpoints import read_checkpoint  # lightsum.checkpoints builds models: imported late

        return read_checkpoint(path)  # on the CPU: Lightning moves the weights and optimizer state where they run

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        # Serialised in memory first: torch's zip writer turns a failing write (a full disk) into
        # "unexpected pos ...", where a plain file write raises the OS error itself.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        # Any name: the best-*.ckpt a killed run was writing may never be written again.
        with AtomicFile(path, orphans="*") as out:
            self.write(buffer.getbuffer(), out)

    def write(self, data: memoryview, out: AtomicFile) -> None:
        """Write the serialised checkpoint into the open partial file (a seam for tests)."""
        out.write(data)
