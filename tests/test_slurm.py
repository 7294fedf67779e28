"""SLURM pre-emption, simulated: SLURM's variables, a fake `scontrol`, SIGUSR1, a kill, the same command again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, scalars, srun_variables, tiny

from lightsum.checkpoints import read_checkpoint
from lightsum.cli import main

JOB_ID = "4242"
EPOCHS = 6


def slurm_env(tmp_path: Path) -> dict[str, str]:
    """What srun sets for a 1-task job, and a `scontrol` on PATH that records its arguments and then
    ends the job, as SLURM does once a job is requeued (its caller, the training process, is killed
    before it can train or write anything more)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path / "scontrol.log"}"\nkill -9 $PPID\n')
    scontrol.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {
        **env,
        "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}",
        **srun_variables(JOB_ID),
    }


def launch(root: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    # The command an sbatch script would run, unchanged between the first run and the requeued one.
    return subprocess.Popen(
        [sys.executable, "-m", "lightsum", "fit", *tiny(root, epochs=EPOCHS), "--data.num_samples=4000", *extra],
        cwd=root.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.slow
def test_sigusr1_saves_at_a_batch_boundary_requeues_and_the_requeued_job_ends_exactly(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    env = slurm_env(tmp_path)
    uninterrupted = launch(tmp_path / "whole", {k: v for k, v in env.items() if not k.startswith("SLURM_")})
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stdout.read()[-3000:]
    run_dir = root / "default" / f"slurm_{JOB_ID}"  # named after the job: the same folder after a requeue
    # A test callback holds the job at the end of epoch 1's 5th batch (of 13) until the signal is sent.
    paused = {
        **env,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
        "LIGHTSUM_ALLOW_IMPORTS": "test_stop_requests",
    }
    pause = {
        "loop": "train",
        "batch": 5,
        "epoch": 1,
        "marker": str(tmp_path / "paused"),
        "release": str(tmp_path / "release"),
    }
    proc = launch(
        root,
        paused,
        "--trainer.callbacks=" + json.dumps([{"class_path": "test_stop_requests.PauseAt", "init_args": pause}]),
    )
    wait_for((tmp_path / "paused").exists, proc)
    proc.send_signal(signal.SIGUSR1)  # SLURM's warning before the time limit (--signal=SIGUSR1@90)
    (tmp_path / "release").touch()
    proc.wait(timeout=120)  # the fake scontrol kills the job as soon as it is requeued
    output = proc.stdout.read()
    assert proc.returncode == -signal.SIGKILL, output[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", JOB_ID]
    assert "lightsum: stopped by SIGUSR1 after batch" in output
    saved = read_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"))  # written before the requeue
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["trained_batches"] == 5  # mid-epoch

    # The same command again, as the requeued job runs it: it resumes at the next batch and ends as
    # the run that was never stopped.
    requeued = launch(root, env)
    out = requeued.communicate(timeout=300)[0]
    assert requeued.returncode == 0, out[-3000:]
    assert f"Restoring states from the checkpoint path at {run_dir / 'checkpoints' / 'last.ckpt'}" in out
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    (whole,) = (tmp_path / "whole").glob("default/version_0/checkpoints/last.ckpt")
    expected = torch.load(whole, weights_only=True)
    for key, value in final["state_dict"].items():
        assert torch.equal(expected["state_dict"][key], value), key
    assert final["epoch"] == EPOCHS - 1 and final["global_step"] == expected["global_step"] > saved["global_step"]
    assert sorted(p.name for p in (root / "default").iterdir()) == [f"slurm_{JOB_ID}"]
    # The training curve continues from where the signal came, each step once.
    assert [s for s, _ in scalars(run_dir)["train/loss"]] == list(range(final["global_step"]))


def test_the_sbatch_script_asks_for_the_signal_and_its_command_parses(capsys) -> None:
    script = (REPO / "scripts" / "lightsum.sbatch").read_text()
    assert "#SBATCH --signal=SIGUSR1@90" in script and "#SBATCH --requeue" in script
    command = script[script.index("srun python -m lightsum") :].replace("\\\n", " ")
    args = command.replace('"$SLURM_NTASKS_PER_NODE"', "4").replace('"$SLURM_JOB_NUM_NODES"', "2").replace('"$@"', "")
    args = args.split()[4:]  # after "srun python -m lightsum"
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["strategy"] == "ddp" and str(printed["trainer"]["devices"]) == "4"
    assert printed["trainer"]["num_nodes"] == 2
