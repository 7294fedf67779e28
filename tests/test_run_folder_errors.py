"""Run folders lightsum cannot write: one line, exit 2, and every checkpoint and input as it was.

The tests run as root, whom mode bits do not stop: a folder without write permission is simulated
by an ``os.access`` that says so (what ``lightsum.folders`` asks), and one test with real mode bits
runs only as another user. A filesystem turning read-only mid-fit is simulated where the writes
happen: TensorBoard's event file appends and lightsum's atomic files fail with EROFS.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from conftest import tiny

from lightsum.cli import main


def snapshot(*paths: Path) -> dict[Path, bytes]:
    """The bytes of every regular file under ``paths`` (or of ``paths`` that are files)."""
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*"))]
    return {f: f.read_bytes() for f in files if f.is_file() and not f.is_symlink()}


def refused(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one stderr line of ``lightsum ARGS``, which must exit 2 without a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception in thread" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture
def deny_writes(monkeypatch: pytest.MonkeyPatch):
    """``deny_writes(folder)``: ``os.access`` says this process may not write into ``folder``."""

    def deny(folder: Path) -> None:
        access = os.access
        denied = os.path.abspath(folder)
        monkeypatch.setattr(
            os,
            "access",
            lambda path, mode, **kw: (
                False if mode & os.W_OK and os.path.abspath(path) == denied else access(path, mode, **kw)
            ),
        )

    return deny


def test_a_save_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    logs = tmp_path / "lightning_logs"
    logs.write_text("not a folder\n")
    line = refused(["fit", *tiny(logs, epochs=1)], capsys)
    assert line == (
        f"lightsum: error: trainer.logger.init_args.save_dir: cannot write {logs}/default: "
        f"{logs} is a file, not a folder"
    )
    assert logs.read_text() == "not a folder\n"


def test_a_working_folder_fit_cannot_write(
    tmp_path: Path, deny_writes, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    deny_writes(tmp_path)
    line = refused(["fit", *tiny(tmp_path, epochs=1), "--trainer.logger.init_args.save_dir=lightning_logs"], capsys)
    assert line == (
        "lightsum: error: trainer.logger.init_args.save_dir: cannot write lightning_logs/default: "
        f"no write permission in {tmp_path}"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_filesystem_is_named_so(tmp_path: Path, deny_writes, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightsum import folders
    from lightsum.errors import CannotWrite

    deny_writes(tmp_path)
    monkeypatch.setattr(folders, "read_only", lambda folder: Path(folder) == tmp_path)
    with pytest.raises(CannotWrite) as err:
        folders.check_writable(tmp_path / "logs" / "default", "trainer.logger.init_args.save_dir")
    assert err.value.errno == errno.EROFS
    assert str(err.value) == (
        f"trainer.logger.init_args.save_dir: cannot write {tmp_path}/logs/default: read-only filesystem in {tmp_path}"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder whatever its mode bits")
def test_a_folder_without_write_permission(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tmp_path.chmod(0o555)
    try:
        line = refused(["fit", *tiny(tmp_path / "logs", epochs=1)], capsys)
    finally:
        tmp_path.chmod(0o755)
    assert line.endswith(f"cannot write {tmp_path}/logs/default: no write permission in {tmp_path}")


@pytest.mark.parametrize(("command", "denied"), [("fit", "."), ("fit", "checkpoints"), ("test", ".")])
def test_a_read_only_run_folder(
    command: str, denied: str, run_dir: Path, tmp_path: Path, deny_writes, capsys: pytest.CaptureFixture
) -> None:
    # A resumed fit writes into its run folder and checkpoints/, a test into the checkpoint's run folder.
    run = tmp_path / "logs" / run_dir.parent.name / run_dir.name
    shutil.copytree(run_dir, run)  # a copy: had the check failed, the shared run would have trained on
    before = snapshot(run)
    deny_writes(run / denied)
    ckpt = "last" if command == "fit" else str(next(run.glob("checkpoints/best-*.ckpt")))
    line = refused(
        [
            command,
            *tiny(tmp_path / "logs", epochs=9),
            f"--trainer.logger.init_args.version={run.name}",
            f"--ckpt_path={ckpt}",
        ],
        capsys,
    )
    what = "trainer.logger.init_args.save_dir" if command == "fit" else command
    assert line == f"lightsum: error: {what}: cannot write {run / denied}: no write permission"
    assert snapshot(run) == before


def test_a_filesystem_turning_read_only_mid_fit(
    run_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # From the second epoch on, TensorBoard's appends to its event file and lightsum's atomic files
    # fail as on a filesystem remounted read-only. TensorBoard's writer thread meets it first, and
    # Lightning's logger used to report it as "you tried to log <value> which is currently not supported".
    from tensorboard.compat.tensorflow_stub.io import gfile

    from lightsum import atomic
    from lightsum.callbacks.train_loss import TrainLoss

    run = run_root / "default" / "version_0"
    kept: dict[Path, bytes] = {}

    def read_only(filename: object) -> OSError:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), filename)

    def epoch_start(self: TrainLoss, trainer, pl_module) -> None:
        if trainer.current_epoch == 1 and not kept:
            kept.update(snapshot(run / "checkpoints", run / "config.yaml"))
        start(self, trainer, pl_module)

    def append(fs, filename, content, binary_mode=False) -> None:
        if kept:
            raise read_only(filename)
        tensorboard_append(fs, filename, content, binary_mode)

    def open_atomic(path, mode, **options):
        if kept:
            raise read_only(path)
        return open(path, mode, **options)

    start, tensorboard_append = TrainLoss.on_train_epoch_start, gfile.LocalFileSystem.append
    monkeypatch.setattr(TrainLoss, "on_train_epoch_start", epoch_start)
    monkeypatch.setattr(gfile.LocalFileSystem, "append", append)
    monkeypatch.setattr(atomic, "open", open_atomic, raising=False)
    line = refused(["fit", *tiny(run_root, epochs=2)], capsys)
    assert {p.name for p in kept} == {"best-epoch=000.ckpt", "last.ckpt", "config.yaml"}
    assert line.startswith(f"lightsum: error: cannot write {run}/") and line.endswith(": Read-only file system")
    assert snapshot(run / "checkpoints", run / "config.yaml") == kept
