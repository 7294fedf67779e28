"""lightsum.atomic: a file is written whole or not at all; killed writers' partial files are cleaned up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightsum.atomic import AtomicCheckpointIO, AtomicFile
from lightsum.errors import CannotWrite


def dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # its pid now names no process, as after kill -9
    return finished.pid


def test_the_target_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.csv"
    out = AtomicFile(target, "w")
    out.open().write("half")
    assert not target.exists() and out.partial.exists()
    assert out.partial.name == f".out.csv.partial-{socket.gethostname()}-{os.getpid()}"
    out.file.write(" and the rest")
    out.commit()
    assert target.read_text() == "half and the rest" and not out.partial.exists()


def test_an_exception_keeps_the_previous_file_and_leaves_no_partial(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("earlier")
    with pytest.raises(RuntimeError, match="boom"):
        with AtomicFile(target, "w") as f:
            f.write("new")
            raise RuntimeError("boom")
    assert target.read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, target)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_killed_writers_partials_are_removed_live_and_foreign_ones_kept(tmp_path: Path) -> None:
    host, dead = socket.gethostname(), dead_pid()
    orphans = [tmp_path / f".last.ckpt.partial-{host}-{dead}", tmp_path / f".best-epoch=003.ckpt.partial-{host}-{dead}"]
    kept = [
        tmp_path / f".last.ckpt.partial-{host}-{os.getppid()}",  # a live writer's
        tmp_path / f".last.ckpt.partial-other-host-{dead}",
    ]  # another host's: its pid says nothing here
    for partial in (*orphans, *kept):
        partial.write_bytes(b"x")
    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")  # a checkpoint folder: any name
    assert not any(p.exists() for p in orphans) and all(p.exists() for p in kept)
    # A user's folder: only the partial files of the output being written.
    other = tmp_path / f".notes.txt.partial-{host}-{dead}"
    mine = tmp_path / f".out.csv.partial-{host}-{dead}"
    other.write_text("x")
    mine.write_text("x")
    with AtomicFile(tmp_path / "out.csv", "w") as f:
        f.write("rows")
    assert other.exists() and not mine.exists()


def test_a_full_disk_names_the_file_keeps_the_old_one_and_leaves_no_partial(tmp_path: Path, full_disk) -> None:
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, target)
    full_disk(100)
    with pytest.raises(CannotWrite, match=f"^cannot write {target}: No space left on device$"):
        AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(1000)}, target)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.slow  # a fresh interpreter importing torch and Lightning
def test_a_real_os_error_while_writing_a_checkpoint(tmp_path: Path) -> None:
    # A file-size limit makes the kernel refuse the write (EFBIG), as a full disk refuses it (ENOSPC).
    script = f"""
import resource, signal, torch
from lightsum.atomic import AtomicCheckpointIO
from lightsum.errors import CannotWrite
io = AtomicCheckpointIO()
io.save_checkpoint({{"step": 1}}, {str(tmp_path / "last.ckpt")!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    io.save_checkpoint({{"step": 2, "w": torch.zeros(1_000_000)}}, {str(tmp_path / "last.ckpt")!r})
except CannotWrite as err:
    print(err)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == f"cannot write {tmp_path / 'last.ckpt'}: File too large", proc.stderr
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
