"""Exact resume through the CLI: stop at an epoch boundary or kill -9 at any moment, resume, end where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny

from lightsum.checkpoints import read_checkpoint
from lightsum.cli import main

EPOCHS = 4


def final_weights(run_root: Path, name: str) -> dict[str, torch.Tensor]:
    (ckpt,) = run_root.glob(f"{name}/version_*/checkpoints/last.ckpt")
    return torch.load(ckpt, weights_only=True)["state_dict"]


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("logs")
    main(["fit", *tiny(root, epochs=EPOCHS), "--trainer.logger.init_args.name=whole"])
    return final_weights(root, "whole")


def test_resume_at_an_epoch_boundary_is_exact(uninterrupted, run_root: Path) -> None:
    main(["fit", *tiny(run_root, epochs=2), "--trainer.logger.init_args.name=split"])
    resumed = main(["fit", *tiny(run_root, epochs=EPOCHS), "--trainer.logger.init_args.name=split", "--ckpt_path=last"])
    assert resumed.trainer.current_epoch == EPOCHS
    # Dropout masks and loader seeds drawn after the resume are those of the uninterrupted run.
    assert_bitwise_equal(final_weights(run_root, "split"), uninterrupted)


def launch(run_root: Path, resume: bool) -> subprocess.Popen:
    args = [
        *tiny(run_root, epochs=EPOCHS),
        "--trainer.logger.init_args.name=killed",
        '--trainer.plugins=[{"class_path": "slow_checkpoint_io.SlowAtomicCheckpointIO"}]',
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "helpers"), str(REPO)]),
        "LIGHTSUM_ALLOW_IMPORTS": "slow_checkpoint_io",
    }  # a test's own plugin: outside lightsum's allow-list
    return subprocess.Popen(
        [sys.executable, "-m", "lightsum", "fit", *args, *(["--ckpt_path=last"] if resume else [])],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"fit ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_kill_9_at_any_moment_then_resume_ends_as_the_uninterrupted_run(uninterrupted, run_root: Path) -> None:
    def writing(pattern: str, over_a_last_ckpt: bool):
        def ready() -> bool:
            return any(
                any(d.glob(f".{pattern}.partial-*")) and (d / "last.ckpt").exists() == over_a_last_ckpt
                for d in run_root.glob("killed/version_*/checkpoints")
            )

        return ready

    def after(seconds: float):
        start = time.monotonic()
        return lambda: time.monotonic() - start > seconds

    # (moment, condition made at launch). The slow writer holds each complete partial file 0.4 s
    # before renaming it, so "during a write" is the moment that matters: before the rename.
    faults = [
        ("during the first write of last.ckpt (nothing to resume yet)", lambda: writing("last.ckpt", False)),
        ("during a write of last.ckpt replacing an older one", lambda: writing("last.ckpt", True)),
        ("during any checkpoint write, with a last.ckpt to resume from", lambda: writing("*.ckpt", True)),
        ("1.5 s after launch (during start-up)", lambda: after(1.5)),
    ]
    for i, (_moment, condition) in enumerate(faults):
        proc = launch(run_root, resume=i > 0)
        kill_when(proc, condition())
        for ckpt in run_root.glob("killed/version_*/checkpoints/*.ckpt"):
            read_checkpoint(str(ckpt))  # complete and readable, whatever the moment of the kill
            torch.load(ckpt, weights_only=True)
    proc = launch(run_root, resume=True)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    # The first kill came before any last.ckpt, so the next launch started a new run folder;
    # every later launch resumed the same one, whose writes removed the killed writers' partial files.
    (final,) = [d for d in run_root.glob("killed/version_*/checkpoints") if (d / "last.ckpt").exists()]
    assert not list(final.glob("*.partial-*"))
    assert_bitwise_equal(final_weights(run_root, "killed"), uninterrupted)
