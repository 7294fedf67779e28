"""``python -m lightsum sweep GRID``: named strategies x seeds, each trial a ``fit`` then a ``test`` in a
run folder of its own, run here (several at a time) or as one SLURM job array, then one table.

The sweep folder (``--out``) holds ``sweep.json`` (what the sweep is, and the SLURM arrays submitted
for it: a trial, named ``<strategy>/seed_<n>``, takes its arguments from it), ``<strategy>/seed_<n>/``
(each trial's TensorBoard run folder, checkpoints and ``trial.json``, which records the arguments it
ran with), ``logs/`` (each trial's output) and the table ``lightsum report`` writes (``sweep.md``,
``sweep.csv``, ``sweep.png``).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightsum.atomic import AtomicFile
from lightsum.errors import DamagedFile, OneLineParserErrors, note

MANIFEST = "sweep.json"
RESULT = "trial.json"  # in a trial's run folder: written after its fit, completed by its test
# Arguments the sweep sets for each trial itself: a grid or --extra that named them would be overruled.
_OWN = (
    "--seed_everything",
    "--data.seed",
    "--data.init_args.seed=",
    "--trainer.logger",
    "--ckpt_path",
    "--trainer.default_root_dir",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a strategy names a folder
_RESERVED = ("logs", "sweep.json", "sweep.md", "sweep.csv", "sweep.png", "sweep.sbatch")  # the sweep's own files


@dataclass(frozen=True)
class Trial:
    """One (strategy, seed) of a sweep: its overrides and its run folder."""

    strategy: str
    seed: int
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.strategy}/seed_{self.seed}"

    def folder(self, out: Path) -> Path:
        return out / self.strategy / f"seed_{self.seed}"


def read_grid(path: Path) -> dict[str, Any]:
    """A grid file: ``strategies`` (name: list of overrides) and optional ``common`` (overrides every
    trial gets first), each override one ``--key=value`` token, as on the command line.

    Raises:
        ValueError: the file is missing, not YAML, or not of that form; the line names what is wrong.
    """
    try:
        grid = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ValueError(f"sweep: cannot read the grid file {path} ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise ValueError(f"sweep: {path} is not YAML ({' '.join(str(err).split())})") from None
    form = "see configs/strategies.yaml for the form"
    if not isinstance(grid, dict) or not isinstance(grid.get("strategies"), dict) or not grid["strategies"]:
        raise ValueError(f"sweep: {path} must map `strategies` to named lists of overrides ({form})")
    unknown = sorted(set(grid) - {"common", "strategies"})
    if unknown:
        raise ValueError(f"sweep: {path}: unknown key {unknown[0]!r}: a grid holds `common` and `strategies` ({form})")
    lists = {"common": grid.get("common") or [], **{f"strategies.{k}": v or [] for k, v in grid["strategies"].items()}}
    for where, overrides in lists.items():
        check_overrides(overrides, f"{path}: {where}")
    for name in grid["strategies"]:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _RESERVED:
            raise ValueError(
                f"sweep: {path}: strategy name {name!r} must be letters, digits and _ . + - (it names a folder), "
                f"and none of {', '.join(_RESERVED)}"
            )
    return {"common": list(lists["common"]), "strategies": {k: list(v or []) for k, v in grid["strategies"].items()}}


def check_overrides(overrides: Any, where: str) -> None:
    """Each override one ``--key=value`` string, none of the keys the sweep sets per trial."""
    if not isinstance(overrides, list):
        raise ValueError(f"sweep: {where} must be a list of --key=value overrides, got {overrides!r}")
    for item in overrides:
        if not isinstance(item, str) or not re.fullmatch(r"--[\w.]+=.*", item, re.S):
            raise ValueError(f"sweep: {where}: {item!r} is not one --key=value override")
        if item.startswith(_OWN):
            raise ValueError(
                f"sweep: {where}: {item.split('=')[0]} is set by the sweep for each trial "
                "(seeds, run folders and resuming are its own)"
            )


def joined_overrides(args: list[str]) -> list[str]:
    """Command-line overrides as ``--key=value`` tokens (``--key value`` joined), as grids hold them."""
    out: list[str] = []
    for arg in args:
        if out and "=" not in out[-1] and out[-1].startswith("--") and not arg.startswith("--"):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def trials_of(manifest: dict[str, Any]) -> list[Trial]:
    """The sweep's trials, strategy by strategy in the grid's order, seeds ascending: trial i is array task i."""
    return [
        Trial(name, seed, tuple(overrides))
        for name, overrides in manifest["strategies"].items()
        for seed in manifest["seeds"]
    ]


def read_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"sweep: {out} is not a sweep folder (no {MANIFEST}): start it with `lightsum sweep GRID`"
        ) from None
    except (OSError, ValueError) as err:
        raise DamagedFile(path, f"not a sweep manifest ({err})") from None

    def strings(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    if not (
        isinstance(manifest, dict)
        and all(strings(manifest.get(key)) for key in ("configs", "common", "extra"))
        and isinstance(manifest.get("strategies"), dict)
        and all(isinstance(k, str) and strings(v) for k, v in manifest["strategies"].items())
        and isinstance(manifest.get("seeds"), list)
        and all(isinstance(v, int) for v in manifest["seeds"])
    ):
        raise DamagedFile(path, "not a sweep manifest (written by another program, or edited)")
    return manifest


def settle_manifest(out: Path, wanted: dict[str, Any]) -> dict[str, Any]:
    """The manifest to run: ``wanted``, checked against the one a former launch left in ``out``.

    A sweep may grow (more seeds, more strategies) but not change under finished trials: the
    configs, common and extra overrides, and each kept strategy's overrides must be the same.
    """
    if not (out / MANIFEST).exists():
        return wanted
    former = read_manifest(out)
    changed = [key for key in ("configs", "common", "extra") if former[key] != wanted[key]]
    changed += [
        f"strategies.{name}"
        for name, overrides in wanted["strategies"].items()
        if name in former["strategies"] and former["strategies"][name] != overrides
    ]
    if changed:
        raise ValueError(
            f"sweep: {out} holds a sweep with other {', '.join(changed)}: its finished trials would be "
            "mixed with these; choose another --out, or run with the same settings to continue it"
        )
    return {**wanted, "jobs": former.get("jobs", [])}


def write_json(path: Path, value: dict[str, Any]) -> None:
    with AtomicFile(path, "w") as file:
        file.write(json.dumps(value, indent=1) + "\n")


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """A trial's ``trial.json``: None before its fit ended; a damaged one counts as not written."""
    path = run_dir / RESULT
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        note(f"{path} is damaged ({err}): counted as not written")
        return None
    if not isinstance(result, dict) or not isinstance(result.get("best_checkpoint"), str):
        note(f"{path} is damaged (not a trial record): counted as not written")
        return None
    return result


def finished(result: dict[str, Any] | None) -> bool:
    """Whether a trial's record (``read_result``) holds its test metrics."""
    return result is not None and isinstance(result.get("test"), dict)


def trial_args(manifest: dict[str, Any], trial: Trial, out: Path) -> list[str]:
    """The arguments ``fit`` and ``test`` of a trial share: configs, then common, strategy and extra
    overrides, then the trial's seeds and run folder."""
    return [
        *identity(manifest, trial)["args"],
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.logger.init_args.name={trial.strategy}",
        f"--trainer.logger.init_args.version=seed_{trial.seed}",
    ]


def identity(manifest: dict[str, Any], trial: Trial) -> dict[str, Any]:
    """What a trial is: its arguments but its run folder, and each config file's content digest.
    Recorded in its ``trial.json``, so that a result is reused only for the same trial (not for a
    strategy re-added with other overrides, or a config edited since)."""
    configs = [arg for config in manifest["configs"] for arg in ("--config", config)]
    args = [*configs, *manifest["common"], *trial.overrides, *manifest["extra"]]
    args += [f"--seed_everything={trial.seed}", f"--data.seed={trial.seed}"]
    return {"args": args, "config_sha256": {config: file_digest(config) for config in manifest["configs"]}}


def file_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as err:
        raise ValueError(f"sweep: cannot read the config {path} ({err.strerror or err})") from None


def check_recorded(out: Path, manifest: dict[str, Any], trial: Trial, result: dict[str, Any] | None) -> None:
    """Refuse a trial whose folder holds the record (``read_result``) of another trial (see ``identity``)."""
    if result is not None and result.get("identity") != identity(manifest, trial):
        raise ValueError(
            f"sweep: {trial.folder(out)} holds a trial run with other arguments or configs (its {RESULT} "
            f"says which): remove that folder to run {trial.name} again, or use another --out"
        )


def run_trial(out: Path, name: str) -> None:
    """Run the trial ``name`` (``<strategy>/seed_<n>``) of the sweep in ``out`` in this process: its
    fit (resumed from the run folder's newest checkpoint when a former attempt was stopped), then
    ``test`` of its best checkpoint. ``trial.json`` records the trial's identity and fit (best
    checkpoint, training seconds), then its test metrics. Under srun every task of a DDP trial runs
    this; the global rank 0 writes."""
    from lightsum.cli import build_cli  # Lightning's import cost only where a trial runs
    from lightsum.events import read_scalars
    from lightsum.run_folders import checkpoints_in

    manifest = read_manifest(out)
    trials = {trial.name: trial for trial in trials_of(manifest)}
    if name not in trials:
        raise ValueError(f"sweep: --trial {name}: no such trial in {out / MANIFEST}")
    trial = trials[name]
    run_dir = trial.folder(out)
    result = read_result(run_dir)
    check_recorded(out, manifest, trial, result)
    if finished(result):
        note(f"sweep: {trial.name} is finished ({run_dir / RESULT})")
        return
    args = trial_args(manifest, trial, out)
    result = result or fit_ended(run_dir)
    if result is None:
        resume = ["--ckpt_path=last"] if checkpoints_in(run_dir) else []
        cli = build_cli(["fit", *args, *resume])
        best = cli.trainer.checkpoint_callback.best_model_path
        if not best:
            raise ValueError(f"sweep: {trial.name}: its fit saved no best checkpoint (did it validate?)")
        # Relative to the run folder: a sweep folder moved elsewhere (scratch to project space) still tests.
        result = {"best_checkpoint": os.path.relpath(best, run_dir), "fit_seconds": read_scalars(run_dir).seconds}
        if cli.trainer.is_global_zero:
            write_json(run_dir / RESULT, record(manifest, trial, result))
    cli = build_cli(["test", *args, f"--ckpt_path={run_dir / result['best_checkpoint']}"])
    result["test"] = {
        key.removeprefix("test/"): float(value)
        for key, value in cli.trainer.callback_metrics.items()
        if key.startswith("test/")
    }
    if cli.trainer.is_global_zero:
        write_json(run_dir / RESULT, record(manifest, trial, result))


def record(manifest: dict[str, Any], trial: Trial, result: dict[str, Any]) -> dict[str, Any]:
    """A trial's ``trial.json``: who it is, then what its fit and test gave."""
    keep = ("best_checkpoint", "fit_seconds", "test")
    return {
        "strategy": trial.strategy,
        "seed": trial.seed,
        "identity": identity(manifest, trial),
        **{k: result[k] for k in keep if k in result},
    }


def fit_ended(run_dir: Path) -> dict[str, Any] | None:
    """A trial's fit record when its fit ran to the end but the record was not written (a stop
    request in between): its ``last.ckpt`` reached the limits of the run's ``config.yaml``, and its
    best checkpoint is the one the run's ``best_checkpoint`` callback kept."""
    from lightsum.checkpoints import nothing_left_to_train, read_checkpoint
    from lightsum.events import read_scalars

    last, config_file = run_dir / "checkpoints" / "last.ckpt", run_dir / "config.yaml"
    if not (last.is_file() and config_file.is_file()):
        return None
    config = yaml.safe_load(config_file.read_text()) or {}
    trainer, monitor = config.get("trainer") or {}, (config.get("best_checkpoint") or {}).get("monitor")
    checkpoint = read_checkpoint(last)
    if not nothing_left_to_train(checkpoint, trainer.get("max_epochs"), trainer.get("max_steps") or -1):
        return None
    best = [
        state.get("best_model_path")
        for state in checkpoint.get("callbacks", {}).values()
        if isinstance(state, dict) and monitor is not None and state.get("monitor") == monitor
    ]
    best = [path for path in best if path and Path(path).is_file()]
    if not best:
        return None
    return {"best_checkpoint": os.path.relpath(best[0], run_dir), "fit_seconds": read_scalars(run_dir).seconds}


def launch_local(out: Path, trials: list[Trial], parallel: int) -> None:
    """Run ``trials`` as child processes, ``parallel`` at a time, each with its share of the cores
    (``OMP_NUM_THREADS``) and, where there are several GPUs, the least busy of them
    (``CUDA_VISIBLE_DEVICES``), saying as each ends how it went. A stop request (Ctrl-C, SIGTERM) is
    passed on to the running trials, which stop at a batch boundary with a checkpoint: the next
    launch resumes them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // parallel))}
    gpus = visible_gpus() if parallel > 1 else []
    (out / "logs").mkdir(parents=True, exist_ok=True)
    queue, running, done = list(trials), {}, 0
    try:
        while queue or running:
            while queue and len(running) < parallel:
                trial = queue.pop(0)
                if gpus:  # the least busy: the trials would otherwise all train on the first GPU
                    busy = [gpu for *_, gpu in running.values()]
                    env["CUDA_VISIBLE_DEVICES"] = min(gpus, key=busy.count)
                log = out / "logs" / f"{trial.strategy}_seed_{trial.seed}.log"
                with open(log, "a") as output:
                    command = [sys.executable, "-m", "lightsum", "sweep", "--out", str(out), "--trial", trial.name]
                    proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
                running[proc] = (trial, log, time.monotonic(), env.get("CUDA_VISIBLE_DEVICES"))
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                trial, log, started, _ = running.pop(proc)
                done += 1
                seconds = time.monotonic() - started
                if proc.returncode == 0:
                    scores = (read_result(trial.folder(out)) or {}).get("test", {})
                    said = ", ".join(f"{k} {scores[k]:.4f}" for k in ("min_recall", "boundary_accuracy") if k in scores)
                    note(f"sweep: [{done}/{len(trials)}] {trial.name} done in {seconds:.0f} s: test {said}")
                else:
                    note(f"sweep: [{done}/{len(trials)}] {trial.name} failed (exit {proc.returncode}): see {log}")
    finally:
        for proc in running:  # a stop request, or an error here: the trials stop with a checkpoint
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            proc.wait()


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries ([] without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return listed.split(",") if listed else [str(i) for i in range(torch.cuda.device_count())]


SBATCH = """#!/bin/bash
# Written by `lightsum sweep` (--launcher slurm): array task i runs trial i of the list below.
#SBATCH --job-name=lightsum-sweep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1            # --sbatch=--ntasks-per-node=N for N devices (with --trainer.devices N)
#SBATCH --signal=SIGUSR1@90            # 90 s before the limit: the trial stops at a batch, saves, requeues itself
#SBATCH --requeue
#SBATCH --open-mode=append             # a requeued task appends to its log
# The trials' names, fixed for this array: a sweep grown later renumbers nothing here.
TRIALS=({trials})
srun {python} -m lightsum sweep --out {out} --trial "${{TRIALS[$SLURM_ARRAY_TASK_ID]}}"
"""


def launch_slurm(out: Path, manifest: dict[str, Any], trials: list[Trial], options: list[str], wait: bool) -> str:
    """Submit ``trials`` as one SLURM job array (task i runs trial i) and record its job id in the
    manifest; return the id. With ``wait``, return once no task of it is queued or running."""
    script = out / "sweep.sbatch"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    script.write_text(
        SBATCH.format(
            trials=" ".join(shlex.quote(trial.name) for trial in trials),
            python=shlex.quote(sys.executable),
            out=shlex.quote(str(out)),
        )
    )
    # --output here, not in the script: #SBATCH lines are not parsed by a shell (a path with spaces).
    logs = str(out / "logs").replace("%", "%%") + "/slurm-%A_%a.out"  # %% is sbatch's literal %
    command = ["sbatch", "--parsable", f"--array=0-{len(trials) - 1}", f"--output={logs}", *options, str(script)]
    try:
        submitted = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise ValueError("sweep: --launcher slurm needs SLURM's sbatch, which is not on PATH") from None
    if submitted.returncode != 0:
        raise ValueError(f"sweep: sbatch refused the array: {' '.join(submitted.stderr.split())}")
    job = submitted.stdout.strip().split(";")[0]
    write_json(out / MANIFEST, {**manifest, "jobs": [*manifest.get("jobs", []), job]})
    note(f"sweep: submitted {len(trials)} trial(s) as SLURM array job {job} ({script})")
    # Not `sbatch --wait`: it returned while a requeued task was pending again (Slurm 22.05). A poll
    # that backs off to a minute, and lives through a few failed squeue calls (a busy controller).
    pause, failures = 1.0, 0
    while wait:
        try:
            if not queued(job):
                break
            failures = 0
        except ValueError:
            failures += 1
            if failures > 5:
                raise
        time.sleep(pause)
        pause = min(pause * 1.2, 60.0)  # 1 s at first: a short array is not kept waiting
    return job


def queued(job: str) -> bool:
    """Whether a task of SLURM job ``job`` is pending, running or requeued (``squeue``)."""
    listed = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True)
    if listed.returncode != 0 and "Invalid job id" in listed.stderr:
        return False  # ended and purged
    if listed.returncode != 0:
        raise ValueError(f"sweep: squeue -j {job} failed: {' '.join(listed.stderr.split())}")
    return bool(listed.stdout.strip())


@contextmanager
def launching(out: Path) -> Iterator[None]:
    """One launcher at a time per sweep folder: two would run the same trials into the same folders."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".launch.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"sweep: another `lightsum sweep` is launching {out}: wait for it to end") from None
        yield


def check_no_array_running(out: Path) -> None:
    """Refuse to launch while an array submitted for this sweep is queued or running: its tasks
    would run the same trials into the same folders."""
    if not (out / MANIFEST).exists():
        return
    for job in read_manifest(out).get("jobs", []):
        try:
            running = queued(str(job))
        except (ValueError, FileNotFoundError):
            continue  # no SLURM here (a sweep folder brought from a cluster)
        if running:
            raise ValueError(
                f"sweep: SLURM array job {job} of {out} is still queued or running: wait for it to end "
                f"(squeue -j {job}) or cancel it (scancel {job}), then launch again"
            )


def check_parse(manifest: dict[str, Any], trials: list[Trial], out: Path) -> None:
    """Parse every trial's arguments as ``fit`` would, before anything is launched: a mistyped key
    or value is one line now, not a log per trial later."""
    from lightsum.cli import build_cli

    parser = build_cli([f"--trainer.logger.init_args.save_dir={out}"], run=False).parser
    for trial in trials:
        parser.parse_args(trial_args(manifest, trial, out))


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        note("sweep: no figure (matplotlib is not installed: pip install 'lightsum[report]'); the table only")
        return False
    return True


class SweepParser(OneLineParserErrors, argparse.ArgumentParser):
    error_context = "sweep: "
    help_hint = "lightsum sweep --help"


def sweep_main(argv: list[str]) -> None:
    """Parse ``sweep`` arguments; launch the sweep's unfinished trials (or, with ``--trial``, run one)."""
    parser = SweepParser(
        prog="lightsum sweep",
        allow_abbrev=False,  # an abbreviation would be taken for an option of the sweep's, not a trial's
        description="Run every strategy of a grid file with several seeds, each trial a `fit` then a `test` of its "
        "best checkpoint in <out>/<strategy>/seed_<n>, and write one table (mean and spread across seeds of the "
        "test metrics and fit time) with `lightsum report`. Run again, it skips finished trials and resumes "
        "interrupted ones. Arguments it does not know (--trainer.max_steps=500, ...) go to every trial.",
    )
    parser.add_argument("grid", nargs="?", help="grid file: `strategies` (name: overrides) and `common` overrides")
    parser.add_argument("--config", "-c", action="append", default=[], help="config file(s) under every trial")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per strategy (default: %(default)s)")
    parser.add_argument("--out", help="the sweep folder (default: lightning_logs/sweep_<grid file name>)")
    parser.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local: the trials run here, --parallel at a time; slurm: one job array (default: %(default)s)",
    )
    parser.add_argument(
        "--parallel", type=int, default=1, help="local: trials at a time, each with its share of the cores"
    )
    parser.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="slurm: an sbatch option (--sbatch=--time=1:00:00)",
    )
    parser.add_argument("--wait", action="store_true", help="slurm: wait for the array to end, then write the table")
    parser.add_argument("--no-plots", action="store_true", help="write the table without its figure")
    parser.add_argument("--trial", help=argparse.SUPPRESS)  # what a launcher's child or array task runs
    args, extra = parser.parse_known_args(argv)
    if args.trial is not None:
        if args.out is None:
            parser.error("--trial needs --out")
        run_trial(Path(args.out).absolute(), args.trial)
        return
    if args.grid is None:
        parser.error("the grid file is required (configs/strategies.yaml)")
    if args.launcher == "local" and (args.sbatch or args.wait):
        parser.error("--sbatch and --wait are for --launcher slurm")
    if args.launcher == "slurm" and args.parallel != 1:
        parser.error("--parallel is for --launcher local (SLURM runs the array's tasks as it has room)")
    extra = joined_overrides(extra)
    check_overrides(extra, "the trials' extra arguments")
    if args.seeds < 1 or args.parallel < 1:
        parser.error("--seeds and --parallel must be at least 1")
    for config in args.config:
        if not Path(config).is_file():
            raise ValueError(f"sweep: --config {config}: no such file")
    grid = read_grid(Path(args.grid))
    out = Path(args.out or Path("lightning_logs") / f"sweep_{Path(args.grid).stem}").absolute()
    wanted = {
        "grid": str(Path(args.grid).absolute()),
        "configs": [str(Path(c).absolute()) for c in args.config],
        "common": grid["common"],
        "strategies": grid["strategies"],
        "extra": extra,
        "seeds": list(range(args.seeds)),
    }
    with launching(out):
        manifest = settle_manifest(out, wanted)
        trials = trials_of(manifest)
        check_parse(manifest, trials, out)
        for trial in trials:
            check_recorded(out, manifest, trial, read_result(trial.folder(out)))
        check_no_array_running(out)
        plots = not args.no_plots and (args.launcher == "local" or args.wait) and have_matplotlib()
        write_json(out / MANIFEST, manifest)
        pending = [trial for trial in trials if not finished(read_result(trial.folder(out)))]
        if len(pending) < len(trials):
            note(f"sweep: {len(trials) - len(pending)} of {len(trials)} trials finished already: skipped")
        if args.launcher == "slurm" and pending:
            launch_slurm(out, manifest, pending, args.sbatch, args.wait)
            if not args.wait:
                note(f"sweep: once the array has run: lightsum report {out}")
                return
        elif pending:
            launch_local(out, pending, args.parallel)
    from lightsum.sweep_report import sweep_report

    failed = [trial for trial in trials if not finished(read_result(trial.folder(out)))]
    if failed:
        if len(failed) < len(trials):
            sweep_report(out, plots=plots)
        raise ValueError(
            f"sweep: {len(failed)} trial(s) did not finish ({', '.join(t.name for t in failed)}): "
            f"see {out / 'logs'}; run the same command again to retry them"
        )
    sweep_report(out, plots=plots)
