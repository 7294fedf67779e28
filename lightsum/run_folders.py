"""Which run folder and checkpoint a fit continues: after ``--ckpt_path last`` and on SLURM requeues."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pytorch_lightning.plugins.environments import SLURMEnvironment


def slurm_job_id() -> str | None:
    """The SLURM job this process runs in (``<array job>_<task>`` for array jobs), if launched by srun."""
    if not SLURMEnvironment.detect():
        return None
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")


def stable_slurm_run(config: Any, job_id: str) -> None:
    """Keep a SLURM job in one run folder across requeues, and resume it from its newest checkpoint.

    The run folder is ``<save_dir>/<name>/slurm_<job id>`` (unless a version is set), and the
    trainer's root folder too, so Lightning's pre-emption checkpoint (``hpc_ckpt_N.ckpt``, written
    on SIGUSR1 before it calls ``scontrol requeue``) lands there, not in a working folder other jobs
    share. Without ``--ckpt_path``, a requeued job resumes from the newer of that checkpoint and
    ``checkpoints/last.ckpt``: a job requeued after a node failure has no hpc checkpoint.
    """
    args = getattr(config.trainer.get("logger"), "init_args", None)
    if args is None:
        return
    if args.get("version") is None:
        args["version"] = f"slurm_{job_id}"
    run_dir = Path(args.get("save_dir") or ".") / (args.get("name") or "") / str(args["version"])
    if config.trainer.get("default_root_dir") is None:
        config.trainer.default_root_dir = str(run_dir)
    if config.get("ckpt_path") is None:
        found = [*run_dir.glob("hpc_ckpt_*.ckpt"), *run_dir.glob("checkpoints/last.ckpt")]
        if found:
            config.ckpt_path = str(max(found, key=lambda p: p.stat().st_mtime))


def resume_in_latest_version(config: Any) -> None:
    """Point an unversioned TensorBoard logger at the newest run folder holding a last.ckpt.

    ``--ckpt_path last`` searches the checkpoint folder of *this* run; a fresh logger version would
    make that an empty folder. Reusing the version continues the same run folder and curves.
    """
    args = getattr(config.trainer.get("logger"), "init_args", None)
    if args is None or args.get("version") is not None:
        return
    root = Path(args.get("save_dir") or ".") / (args.get("name") or "")
    found = [
        int(m.group(1))
        for p in root.glob("version_*/checkpoints/last.ckpt")
        if (m := re.fullmatch(r"version_(\d+)", p.parent.parent.name))
    ]
    if found:
        args["version"] = max(found)
