"""Run folders (``<save_dir>/<name>/<version>/``): which one a fit continues (``--ckpt_path last``,
SLURM requeues), which checkpoint ``validate``, ``test`` and ``predict`` evaluate, and where they log."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pytorch_lightning.plugins.environments import SLURMEnvironment

from lightsum.checkpoints import newest_loadable
from lightsum.errors import note


def slurm_job_id() -> str | None:
    """The SLURM job this process runs in (``<array job>_<task>`` for array jobs), if launched by srun."""
    if not SLURMEnvironment.detect():
        return None
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")


def stable_slurm_run(config: Any, job_id: str) -> None:
    """Keep a SLURM job in one run folder across requeues, and resume it from its newest checkpoint.

    The run folder is ``<save_dir>/<name>/slurm_<job id>`` (unless a version is set), and the
    trainer's root folder too, so Lightning's pre-emption checkpoint (``hpc_ckpt_N.ckpt``) would land
    there, not in a working folder other jobs share. Without ``--ckpt_path``, a requeued job resumes
    from the newest checkpoint of that folder that loads (``checkpoints/last.ckpt``, a best
    checkpoint, ``hpc_ckpt_N.ckpt``): a job requeued after a node failure has no hpc checkpoint, and
    one killed while its newest checkpoint was damaged falls back to the one before it.
    """
    args = getattr(config.trainer.get("logger"), "init_args", None)
    if args is None:
        return
    if args.get("version") is None:
        args["version"] = f"slurm_{job_id}"
    run_dir = Path(args.get("save_dir") or ".") / (args.get("name") or "") / str(args["version"])
    if config.trainer.get("default_root_dir") is None:
        config.trainer.default_root_dir = str(run_dir)
    if config.get("ckpt_path") is None and checkpoints_in(run_dir):
        config.ckpt_path = str(newest_loadable(checkpoints_in(run_dir), str(run_dir)))


def checkpoints_in(run_dir: Path) -> list[Path]:
    """The checkpoints a run folder holds: ``checkpoints/*.ckpt`` and SLURM's ``hpc_ckpt_*.ckpt``."""
    return [*run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]


def runs_root(config: Any) -> Path:
    """``<save_dir>/<name>``: where the config's TensorBoard logger keeps its runs."""
    args = getattr(config.trainer.get("logger"), "init_args", None) or {}
    return Path(args.get("save_dir") or config.trainer.get("default_root_dir") or ".") / (args.get("name") or "")


def checkpoint_to_evaluate(config: Any, command: str) -> tuple[str, str | None]:
    """The checkpoint ``command`` (validate, test, predict) scores, and a note saying which, if it
    was chosen here: ``--ckpt_path`` as given, or, without one (or with ``best`` / ``last``), that
    checkpoint of the newest run of the config's name (the run whose checkpoints were written last).

    Raises:
        ValueError: no such checkpoint: scoring an untrained model would report garbage.
    """
    given = config.get("ckpt_path")
    if given not in (None, "best", "last"):
        return given, None
    kind, root = given or "best", runs_root(config)
    pattern = "best-*.ckpt" if kind == "best" else "last.ckpt"
    runs = [run for run in root.glob("*") if any(run.glob(f"checkpoints/{pattern}"))]
    if not runs:
        raise ValueError(
            f"{command} scores a trained model, and there is no {pattern} under {root}/*/checkpoints: "
            f"run `lightsum fit` with the same --config first, or pass --ckpt_path PATH"
        )
    newest = max(runs, key=lambda run: max(p.stat().st_mtime for p in run.glob("checkpoints/*.ckpt")))
    path = max(newest.glob(f"checkpoints/{pattern}"), key=lambda p: p.stat().st_mtime)
    return str(
        path
    ), f"{command} uses {path}, the {kind} checkpoint of the newest run in {root} (--ckpt_path to choose another)"


def run_folder_of(checkpoint: str | os.PathLike) -> Path | None:
    """The run folder a checkpoint was saved in (``<run>/checkpoints/x.ckpt``, or ``<run>/hpc_ckpt_N.ckpt``
    under SLURM), recognised by its TensorBoard event files; None for a checkpoint kept elsewhere."""
    path = Path(checkpoint).absolute()
    for folder in (path.parent.parent, path.parent) if path.parent.name == "checkpoints" else (path.parent,):
        if any(folder.glob("events.out.tfevents.*")):
            return folder
    return None


def log_into_run_of(config: Any, checkpoint: str) -> None:
    """Point the TensorBoard logger at the checkpoint's run folder, so that ``validate`` and ``test``
    add their metrics to the run they score instead of making a run of their own."""
    args = getattr(config.trainer.get("logger"), "init_args", None)
    run = run_folder_of(checkpoint)
    if args is not None and run is not None:
        args["save_dir"], args["name"], args["version"] = str(run.parent.parent), run.parent.name, run.name


def resume_in_latest_version(config: Any) -> None:
    """Resolve ``--ckpt_path last`` to the newest checkpoint that loads in the run it continues.

    The run is the logger's version when one is set, else the newest ``version_N`` folder holding a
    checkpoint, and the logger is pointed at it: ``last`` searches the checkpoint folder of *this*
    run, and a fresh version would make that an empty folder. Reusing the version continues the same
    run folder and curves. A damaged ``last.ckpt`` is skipped (named in a note) for the newest
    checkpoint before it. With no run to continue, fit starts a new one, saying so.

    Raises:
        ValueError: the run holds checkpoints and none of them loads.
    """
    args = getattr(config.trainer.get("logger"), "init_args", None)
    if args is None:  # no TensorBoard logger: Lightning's checkpoints go to <default_root_dir>/checkpoints
        folder = Path(config.trainer.get("default_root_dir") or ".") / "checkpoints"
        found = list(folder.glob("*.ckpt"))
        config.ckpt_path = str(newest_loadable(found, str(folder))) if found else None
        if not found:
            note(f"--ckpt_path last: no checkpoint in {folder} to continue from; starting a new run")
        return
    root = Path(args.get("save_dir") or ".") / (args.get("name") or "")
    if args.get("version") is None:
        found = [
            int(m.group(1))
            for run in root.glob("version_*")
            if (m := re.fullmatch(r"version_(\d+)", run.name)) and checkpoints_in(run)
        ]
        if found:
            args["version"] = max(found)
    run_dir = root / (args["version"] if isinstance(args.get("version"), str) else f"version_{args.get('version')}")
    if args.get("version") is None or not checkpoints_in(run_dir):
        note(f"--ckpt_path last: no checkpoint under {root}/*/checkpoints to continue from; starting a new run")
        config.ckpt_path = None
        return
    config.ckpt_path = str(newest_loadable(checkpoints_in(run_dir), str(run_dir)))
