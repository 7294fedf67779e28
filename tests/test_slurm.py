"""What the one-node CPU cluster of tests/test_slurm_cluster.py cannot check: that everything is on
disk before ``scontrol requeue`` (a fake one that kills its caller at once), and the sbatch script's
command parsed as 2 nodes of 4 GPUs. Pre-emption, requeueing and resuming run there on real SLURM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, scalars, srun_variables, tiny

from lightsum.checkpoints import read_checkpoint
from lightsum.cli import main

JOB_ID = "4242"


@pytest.mark.slow
def test_the_checkpoint_and_the_curve_are_on_disk_before_scontrol_requeue(tmp_path: Path) -> None:
    # On SLURM, the requeue's SIGTERM finds the stop decided (ignored) and SIGKILL comes KillWait
    # later (5 s on the test cluster, 30 s by default): a run that wrote after requeueing would pass
    # there and lose its files on a slow filesystem. This scontrol kills its caller at once.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path / "scontrol.log"}"\nkill -9 $PPID\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env |= {
        "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}",
        **srun_variables(JOB_ID),
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
        "LIGHTSUM_ALLOW_IMPORTS": "test_stop_requests",
    }
    # A test callback holds the run at the end of epoch 1's 5th batch (of 13) until the signal is sent.
    pause = {"loop": "train", "batch": 5, "epoch": 1, "marker": str(tmp_path / "paused")}
    pause["release"] = str(tmp_path / "release")
    callbacks = [{"class_path": "test_stop_requests.PauseAt", "init_args": pause}]
    root = tmp_path / "logs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightsum", "fit", *tiny(root), "--data.num_samples=4000", "--figures.every_n_epochs=0"]
        + ["--trainer.callbacks=" + json.dumps(callbacks)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "paused").exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)
    (tmp_path / "release").touch()
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == -signal.SIGKILL, output[-3000:]  # by scontrol
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", JOB_ID]
    assert "`weights_only` was not set" not in output  # a whole checkpoint, asked for as such
    run_dir = root / "default" / f"slurm_{JOB_ID}"
    saved = read_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"))
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["trained_batches"] == 5
    assert [s for s, _ in scalars(run_dir)["train/loss"]] == list(range(saved["global_step"]))


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
