"""Multi-process training through the real CLI: 2 CPU processes (gloo), launched by Lightning itself."""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, lightsum_process, scalars, tiny

from lightsum import SumDataModule

pytestmark = pytest.mark.slow
TEST_SAMPLES = 999  # odd: a padding sampler would evaluate one sequence twice on 2 processes


def run(*args: str) -> None:
    proc = lightsum_process(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]


def scored_test_metrics(command: list[str], run_dir: Path, tmp_path: Path) -> dict[str, float]:
    """Run a ``test`` or ``validate`` command; the test/* or val/* values of the event file it adds
    to the checkpoint's run."""
    before = set(run_dir.glob("events.out.tfevents.*"))
    run(*command)
    (new,) = set(run_dir.glob("events.out.tfevents.*")) - before
    alone = tmp_path / new.name
    alone.mkdir()
    shutil.copy(new, alone)
    stage = "val/" if command[0] == "validate" else "test/"
    return {tag: points[-1][1] for tag, points in scalars(alone).items() if tag.startswith(stage)}


def test_two_process_ddp_reports_the_single_process_metrics(run_root: Path, tmp_path: Path) -> None:
    common = [*tiny(run_root), f"--data.test_samples={TEST_SAMPLES}", "--trainer.accelerator=cpu"]
    ddp = ["--config", str(REPO / "configs" / "ddp.yaml")]
    run("fit", *ddp, *common)
    run_dir = run_root / "default" / "version_0"
    (best,) = run_dir.glob("checkpoints/best-*.ckpt")
    two = scored_test_metrics(["test", *ddp, *common, f"--ckpt_path={best}"], run_dir, tmp_path)
    one = scored_test_metrics(
        ["test", *common, f"--ckpt_path={best}"], run_dir, tmp_path
    )  # the packaged default: one process
    assert two["test/sequences"] == one["test/sequences"] == TEST_SAMPLES
    assert two.keys() == one.keys() and len(two) >= 9
    for tag in two:
        # Counts are exact; AUROC, AP and the mean loss see the same values in another order.
        assert two[tag] == pytest.approx(one[tag], abs=1e-6), tag


@pytest.mark.parametrize("loss", ["focal", "logit_adjusted"])
def test_each_loss_trains_under_ddp_and_validates_as_one_process(loss: str, run_root: Path, tmp_path: Path) -> None:
    """Both losses train on 2 processes; the natural, calibration and boundary sets are each
    split over the ranks and gathered: validation on 2 processes gives the single-process figures."""
    common = [
        *tiny(run_root),
        "--trainer.accelerator=cpu",
        f"--model.loss={loss}",
        "--data.sampling=none",
        "--data.calibration_per_sum=21",
        "--data.boundary_per_sum=21",
    ]  # odd set sizes
    ddp = ["--config", str(REPO / "configs" / "ddp.yaml")]
    run("fit", *ddp, *common)
    run_dir = run_root / "default" / "version_0"
    (best,) = run_dir.glob("checkpoints/best-*.ckpt")
    two = scored_test_metrics(["validate", *ddp, *common, f"--ckpt_path={best}"], run_dir, tmp_path)
    one = scored_test_metrics(["validate", *common, f"--ckpt_path={best}"], run_dir, tmp_path)
    assert "val/boundary_accuracy" in two and two.keys() == one.keys()
    for tag in two:
        assert two[tag] == pytest.approx(one[tag], abs=1e-6), tag


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_nodes_on_one_machine(run_root: Path) -> None:
    """Two torchrun agents, one process each, meet on 127.0.0.1 as nodes 0 and 1 of one job."""
    port = free_port()
    fit = [
        *tiny(run_root),
        "--trainer.accelerator=cpu",
        "--trainer.strategy=ddp",
        "--trainer.devices=1",
        "--trainer.num_nodes=2",
        "--trainer.enable_model_summary=false",
    ]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={rank}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "-m",
                "lightsum",
                "fit",
                *fit,
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    errors = [node.communicate(timeout=300)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in errors[1]
    # One run folder, written by global rank 0; each rank took half of every resampled epoch.
    (last,) = run_root.glob("default/version_*/checkpoints/last.ckpt")
    data = SumDataModule(num_samples=600, train_distribution="boundary", batch_size=256)  # the default under tiny()
    data.setup("fit")
    steps_per_epoch = math.ceil(math.ceil(len(data.epoch_sampler) / 2) / 256)
    assert torch.load(last, weights_only=True)["global_step"] == 2 * steps_per_epoch


def test_two_process_resume_at_an_epoch_boundary_is_exact(run_root: Path) -> None:
    """Every rank's random states are in the checkpoint and go back to their own rank."""
    common = [
        "--config",
        str(REPO / "configs" / "ddp.yaml"),
        *tiny(run_root),
        "--trainer.accelerator=cpu",
        "--figures.every_n_epochs=0",
    ]
    run("fit", *common, "--trainer.max_epochs=4", "--trainer.logger.init_args.name=whole")
    run("fit", *common, "--trainer.max_epochs=2", "--trainer.logger.init_args.name=split")
    run("fit", *common, "--trainer.max_epochs=4", "--trainer.logger.init_args.name=split", "--ckpt_path=last")
    whole, split = (
        torch.load(run_root / name / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
        for name in ("whole", "split")
    )
    assert len(split["callbacks"]["RandomStates"]["per_rank"]) == 2
    assert split["global_step"] == whole["global_step"]
    for key, value in whole["state_dict"].items():
        assert torch.equal(split["state_dict"][key], value), key
