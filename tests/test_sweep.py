"""``lightsum sweep``: grid files, the manifest, trials run locally and resumed, and the table."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import GRIDS, REPO, lightsum_process, scalars, tiny, tiny_files, toy_sequences, write_sequences

from lightsum.cli import build_cli, main
from lightsum.events import read_scalars
from lightsum.sweep import MANIFEST, read_grid, settle_manifest, trial_args, trials_of
from lightsum.sweep_report import COLUMNS, sweep_report


def tiny_extra(epochs: int = 2) -> list[str]:
    """Overrides that make a digit-sum trial run in seconds (``tiny`` without its run folder)."""
    return [a for a in tiny(Path("."), epochs) if "logger" not in a] + ["--data.num_samples=2000"]


def sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return lightsum_process("sweep", *args, cwd=cwd, timeout=600)


def write_grid(path: Path, strategies: dict, common: list[str] | None = None) -> Path:
    path.write_text(yaml.safe_dump({"strategies": strategies, **({"common": common} if common else {})}))
    return path


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: p.name)
def test_every_strategy_of_every_grid_parses_and_keeps_what_it_sets(grid: Path, tmp_path: Path) -> None:
    parsed = read_grid(grid)
    configs = [str(REPO / "configs" / "files.yaml")] if "files" in grid.name else []  # the files grid's source
    manifest = {"configs": configs, "extra": [], "seeds": [0], **parsed}
    parser = build_cli([f"--trainer.logger.init_args.save_dir={tmp_path}"], run=False).parser  # one parser for all
    for trial in trials_of(manifest):
        config = parser.parse_args(trial_args(manifest, trial, tmp_path))
        # The last override of a key wins, and the parsed config holds it (none silently ignored).
        for key, value in dict(o[2:].split("=", 1) for o in [*parsed["common"], *trial.overrides]).items():
            key = key.replace("data.", "data.init_args.", 1) if key.startswith("data.") else key
            assert config[key] == yaml.safe_load(value), (trial.name, key)


BAD_GRIDS = {
    "strategies: [a, b]": "must map `strategies` to named lists of overrides",
    "strategies: {a: []}\nseeds: 3": "unknown key 'seeds'",
    "strategies: {a: [--data.sampling oversample]}": "'--data.sampling oversample' is not one --key=value override",
    "strategies: {a: --data.sampling=oversample}": "strategies.a must be a list of --key=value overrides",
    "strategies: {a: [--data.seed=3]}": "--data.seed is set by the sweep for each trial",
    "strategies: {'a/b': []}": "strategy name 'a/b' must be letters, digits and _ . + -",
    "strategies: {a: [}": "is not YAML",
}


@pytest.mark.parametrize("text", BAD_GRIDS)
def test_a_bad_grid_is_refused_in_one_line(text: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "grid.yaml").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("lightsum: error: sweep: ") and BAD_GRIDS[text] in err, err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_sweep_folder_grows_but_does_not_change_under_its_trials(tmp_path: Path) -> None:
    first = {"configs": [], "common": ["--trainer.max_steps=5"], "extra": [], "seeds": [0, 1]}
    first["strategies"] = {"none": [], "oversample": ["--data.sampling=oversample"]}
    (tmp_path / MANIFEST).write_text(json.dumps(first))
    grown = {**first, "seeds": [0, 1, 2], "strategies": {**first["strategies"], "focal": ["--model.loss=focal"]}}
    assert settle_manifest(tmp_path, grown) == {**grown, "jobs": []}  # and the SLURM arrays submitted for it
    for changed, words in (
        ({**first, "common": []}, "other common"),
        ({**first, "strategies": {"none": ["--model.loss=focal"]}}, "other strategies.none"),
        ({**first, "extra": ["--trainer.max_epochs=1"]}, "other extra"),
    ):
        with pytest.raises(ValueError, match=words):
            settle_manifest(tmp_path, changed)


def write_trial(out: Path, strategy: str, seed: int, test: dict | None, fit_seconds: float = 1.0) -> None:
    run = out / strategy / f"seed_{seed}"
    run.mkdir(parents=True)
    result = {
        "strategy": strategy,
        "seed": seed,
        "best_checkpoint": "checkpoints/best.ckpt",
        "fit_seconds": fit_seconds,
    }
    (run / "trial.json").write_text(json.dumps(result | ({"test": test} if test else {})))


def test_the_table_holds_mean_and_spread_of_finished_trials_and_names_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    manifest = {"configs": [], "common": [], "extra": [], "seeds": [0, 1, 2], "strategies": {"a": [], "b": []}}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    # A files sweep: no boundary_accuracy, and that column is left out.
    metrics = {"min_recall": 0.5, "recall_0": 0.5, "recall_1": 0.9, "average_precision_minority": 0.4}
    write_trial(tmp_path, "a", 0, {**metrics, "missed_0": 3, "missed_1": 4}, 10)
    write_trial(tmp_path, "a", 1, {**metrics, "min_recall": 0.7, "missed_0": 1, "missed_1": 1}, 14)
    write_trial(tmp_path, "a", 2, None)  # its fit ended, its test did not
    write_trial(tmp_path, "b", 0, {**metrics, "missed_0": 0, "missed_1": 2}, 20)
    table = sweep_report(tmp_path, plots=False)
    assert "3 trial(s) not finished, left out of the table: a/seed_2, b/seed_1, b/seed_2" in capsys.readouterr().err
    lines = table.splitlines()
    assert lines[0] == (
        "| strategy | seeds | min_recall | recall_0 | recall_1 | average_precision_minority | missed | fit_seconds |"
    )
    assert lines[2] == f"| a | 2 | 0.6000 ± {statistics.stdev([0.5, 0.7]):.4f} | 0.5000 ± 0.0000 | 0.9000 ± 0.0000 " + (
        f"| 0.4000 ± 0.0000 | {statistics.mean([7, 2]):.0f} ± {statistics.stdev([7, 2]):.0f} | 12 ± 3 |"
    )
    assert lines[3] == "| b | 1 | 0.5000 | 0.5000 | 0.9000 | 0.4000 | 2 | 20 |"  # one seed: no spread to tell
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [r["strategy"] for r in rows] == ["a", "b"] and float(rows[0]["min_recall_mean"]) == pytest.approx(0.6)
    assert rows[1]["min_recall_std"] == "" and float(rows[1]["min_recall_mean"]) == 0.5
    assert (tmp_path / "sweep.md").read_text().startswith(table)


def new_event_tags(out: Path, before: list[str]) -> list[list[str]]:
    """The scalar tags of each event file under ``out`` not named in ``before``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = []
    for path in out.rglob("events.out.tfevents.*"):
        if path.name not in before:
            acc = EventAccumulator(str(path))
            acc.Reload()
            tags.append(acc.Tags()["scalars"])
    return tags


def hand_table(out: Path, strategies: list[str], seeds: list[int]) -> dict[str, dict[str, tuple[float, float]]]:
    """The table computed from each trial's own event files: its test/* scalars and training seconds."""
    table = {}
    for strategy in strategies:
        values: dict[str, list[float]] = {}
        for seed in seeds:
            run = out / strategy / f"seed_{seed}"
            test = {tag[5:]: points[-1][1] for tag, points in scalars(run).items() if tag.startswith("test/")}
            test["missed"] = test["missed_0"] + test["missed_1"]
            test["fit_seconds"] = read_scalars(run).seconds
            for column in COLUMNS:
                if column in test:
                    values.setdefault(column, []).append(test[column])
        table[strategy] = {
            c: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else None) for c, v in values.items()
        }
    return table


def assert_csv_equals(out: Path, expected: dict[str, dict[str, tuple[float, float]]]) -> None:
    rows = {row["strategy"]: row for row in csv.DictReader((out / "sweep.csv").open())}
    assert list(rows) == list(expected)
    for strategy, columns in expected.items():
        assert {k[: -len("_mean")] for k in rows[strategy] if k.endswith("_mean")} == set(columns)
        for column, (mean, std) in columns.items():
            # float32 event values against the trials' float metrics
            assert float(rows[strategy][f"{column}_mean"]) == pytest.approx(mean, rel=1e-6, abs=1e-6), column
            cell = rows[strategy][f"{column}_std"]
            assert (cell == "" and std is None) or float(cell) == pytest.approx(std, rel=1e-5, abs=1e-6), column


@pytest.mark.slow
def test_a_local_sweep_runs_every_trial_skips_them_when_run_again_and_its_table_is_the_trials(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "grid.yaml", {"none": [], "oversample": ["--data.sampling=oversample"]})
    out = tmp_path / "sweep"
    args = [str(grid), "--seeds", "2", "--parallel", "2", "--out", str(out), *tiny_extra()]
    done = sweep(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("done in") == 4 and (out / "sweep.png").stat().st_size > 0
    expected = hand_table(out, ["none", "oversample"], [0, 1])
    assert "boundary_accuracy" in expected["none"]  # the test's own boundary set
    assert_csv_equals(out, expected)
    # Each trial: one fit (its own seed, its own folder) and one test of its best checkpoint.
    result = json.loads((out / "oversample" / "seed_1" / "trial.json").read_text())
    assert Path(result["best_checkpoint"]).parent == Path("checkpoints")  # relative: the sweep folder may move
    assert result["identity"]["args"][-2:] == ["--seed_everything=1", "--data.seed=1"]
    config = yaml.safe_load((out / "oversample" / "seed_1" / "config.yaml").read_text())
    assert config["seed_everything"] == 1 and config["data"]["init_args"]["sampling"] == "oversample"
    # Run again: every trial is finished, none runs, the table is the same.
    before = sorted(p.name for p in out.rglob("events.out.tfevents.*"))
    again = sweep(*args, cwd=tmp_path)
    assert again.returncode == 0 and "4 of 4 trials finished already: skipped" in again.stderr
    assert "done in" not in again.stderr and sorted(p.name for p in out.rglob("events.out.tfevents.*")) == before
    assert_csv_equals(out, expected)
    # A trial whose fit ended but whose record was lost (stopped in between) is tested, not fitted again.
    (out / "none" / "seed_0" / "trial.json").unlink()
    again = sweep(*args, cwd=tmp_path)
    assert again.returncode == 0 and "3 of 4 trials finished already: skipped" in again.stderr
    assert sorted(p.name for p in out.rglob("events.out.tfevents.*")) != before  # the test's own event file
    assert not any("train/loss" in scalars_of for scalars_of in new_event_tags(out, before))
    assert_csv_equals(out, expected)
    # `lightsum report` on the sweep folder writes the same table.
    report = lightsum_process("report", str(out), "--no-plots", cwd=tmp_path)
    assert report.returncode == 0 and report.stdout.splitlines()[0].startswith("| strategy | seeds | min_recall")
    assert_csv_equals(out, expected)


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_its_trial_where_it_stopped(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "grid.yaml", {"none": []})
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "lightsum", "sweep", str(grid), "--seeds", "1", "--out", str(out)]
    command += [*tiny_extra(epochs=5), "--data.num_samples=4000"]
    launcher = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    last = out / "none" / "seed_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists():
        assert launcher.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)  # passed on to the trial, which stops with a checkpoint
    assert launcher.wait(timeout=120) != 0
    log = (out / "logs" / "none_seed_0.log").read_text()
    assert "lightsum: stopped by SIGTERM" in log and not (out / "none" / "seed_0" / "trial.json").exists()
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (out / "logs" / "none_seed_0.log").read_text()
    assert f"Restoring states from the checkpoint path at {last}" in log
    series = scalars(out / "none" / "seed_0")
    result = json.loads((out / "none" / "seed_0" / "trial.json").read_text())
    assert [s for s, _ in series["train/loss"]] == list(range(len(series["train/loss"])))  # each step once
    assert len(series["val/min_recall"]) == 5 and result["test"]["min_recall"] == pytest.approx(
        series["test/min_recall"][-1][1]
    )


@pytest.mark.slow
def test_a_sweep_on_files_tabulates_without_the_digit_sums_boundary(tmp_path: Path) -> None:
    train = write_sequences(tmp_path / "train.csv", toy_sequences(400))
    grid = write_grid(tmp_path / "grid.yaml", {"none": [], "oversample": ["--data.sampling=oversample"]})
    out = tmp_path / "sweep"
    files = [a for a in tiny_files(Path("."), train) if "logger" not in a]
    config, rest = files[1], files[2:]
    args = ["--config", config, "--seeds", "1", "--parallel", "2", "--out", str(out), "--no-plots", *rest]
    done = sweep(str(grid), *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = hand_table(out, ["none", "oversample"], [0])
    assert "boundary_accuracy" not in expected["none"]
    assert_csv_equals(out, expected)
    assert not (out / "sweep.png").exists()


@pytest.mark.slow
def test_a_sweep_runs_as_a_slurm_job_array_whose_signalled_tasks_requeue_and_resume(
    slurm_cluster, tmp_path: Path
) -> None:
    # Strategy "held" (tasks 0 and 1) holds at batch 5 of epoch 1 (a test callback) until SLURM's
    # warning arrives; "plain" (tasks 2 and 3) runs through.
    hold = {"batch": 5, "epoch": 1, "marker": str(tmp_path / "holding_{SLURM_ARRAY_TASK_ID}")}
    callbacks = [{"class_path": "hold_until_stop.HoldUntilStop", "init_args": hold}]
    grid = write_grid(tmp_path / "grid.yaml", {"held": [f"--trainer.callbacks={json.dumps(callbacks)}"], "plain": []})
    out = tmp_path / "sweep"
    env = {
        **slurm_cluster.env,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "helpers"), str(REPO)]),
        "LIGHTSUM_ALLOW_IMPORTS": "hold_until_stop",
    }
    launcher = subprocess.Popen(
        [sys.executable, "-m", "lightsum", "sweep", str(grid), "--seeds", "2", "--out", str(out), "--no-plots"]
        + ["--launcher", "slurm", "--wait", "--sbatch=--cpus-per-task=1", "--sbatch=--time=10"]
        + [*tiny_extra(epochs=2), "--data.num_samples=4000"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    for task in (0, 1):
        while not (tmp_path / f"holding_{task}").exists():
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()[-3000:]
            time.sleep(0.1)
    job = next(line.split("_")[0] for line in slurm_cluster.client("squeue", "-h", "-o", "%i").stdout.split())
    for task in (0, 1):  # as --signal=SIGUSR1@90 would, before the time limit
        # An array task that requeues itself while scancel is signalling it leaves scancel retrying
        # (Slurm 22.05): it would signal the rerun as well. Stopped once the task has requeued.
        scancel = subprocess.Popen(["scancel", "--signal=USR1", f"{job}_{task}"], env=slurm_cluster.env)
        log = out / "logs" / f"slurm-{job}_{task}.out"
        while f"requeued SLURM job {job}_{task}" not in (log.read_text() if log.exists() else ""):
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()[-3000:]
            time.sleep(0.1)
        scancel.kill()
        scancel.wait()
    stderr = launcher.communicate(timeout=400)[1]
    assert launcher.returncode == 0, stderr[-3000:]
    assert f"as SLURM array job {job} " in stderr
    # One array, task i ran trial i, each with its own log; the signalled ones requeued once and resumed.
    assert sorted(p.name for p in (out / "logs").glob("slurm-*.out")) == [f"slurm-{job}_{i}.out" for i in range(4)]
    for task in range(4):
        assert slurm_cluster.job_info(f"{job}_{task}")["Restarts"] == ("1" if task < 2 else "0")
    for seed in (0, 1):
        log = (out / "logs" / f"slurm-{job}_{seed}.out").read_text()
        assert f"requeued SLURM job {job}_{seed}" in log and "Restoring states from the checkpoint path at" in log
        series = scalars(out / "held" / f"seed_{seed}")
        assert [s for s, _ in series["train/loss"]] == list(range(len(series["train/loss"])))  # each step once
    assert_csv_equals(out, hand_table(out, ["held", "plain"], [0, 1]))


def start_sweep(tmp_path: Path, strategies: dict, *extra: str) -> tuple[int, str, Path]:
    """``lightsum sweep`` in this process on a grid of ``strategies``: exit code, stderr, sweep folder."""
    grid = write_grid(tmp_path / "grid.yaml", strategies)
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(grid), "--seeds", "2", "--out", str(out), *extra])
    return exit_info.value.code, "", out


def test_a_mistyped_override_is_one_line_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, out = start_sweep(tmp_path, {"a": ["--model.loss=focl"]})
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "model.loss" in err and "focl" in err, err
    assert not (out / "logs").exists()  # no trial was started


def test_a_trial_folder_of_another_trial_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A strategy re-added with other overrides would find the old one's results under its name.
    out = tmp_path / "sweep"
    write_trial(out, "a", 0, {"min_recall": 0.5})
    code, _, _ = start_sweep(tmp_path, {"a": ["--data.sampling=oversample"]})
    err = capsys.readouterr().err
    assert code == 2 and f"{out / 'a' / 'seed_0'} holds a trial run with other arguments or configs" in err, err


@pytest.mark.parametrize(
    "manifest",
    ['{"configs": [], "common": [], "extra": [], "seeds": [0], "strategies": []}', '{"seeds": 3}', "{not json"],
)
def test_a_damaged_manifest_is_one_line(manifest: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / MANIFEST).write_text(manifest)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path), "--no-plots"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "not a sweep manifest" in err, err


def test_an_unknown_trial_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / MANIFEST).write_text(
        '{"configs": [], "common": [], "extra": [], "seeds": [0], "strategies": {"a": []}}'
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--out", str(tmp_path), "--trial", "b/seed_0"])
    assert exit_info.value.code == 2 and "--trial b/seed_0: no such trial" in capsys.readouterr().err


@pytest.mark.slow
def test_a_failed_trial_fails_the_sweep_naming_it_and_the_rest_are_tabulated(tmp_path: Path) -> None:
    # A threshold no digit sum is below: parsed, then refused by the data module inside the trial.
    grid = write_grid(tmp_path / "grid.yaml", {"ok": [], "broken": ["--data.threshold=0"]})
    out = tmp_path / "sweep"
    done = sweep(
        str(grid), "--seeds", "1", "--parallel", "2", "--out", str(out), "--no-plots", *tiny_extra(1), cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "1 trial(s) did not finish (broken/seed_0)" in done.stderr.splitlines()[-1]
    assert "so the threshold must be in [1, 270]" in (out / "logs" / "broken_seed_0.log").read_text()
    assert [r["strategy"] for r in csv.DictReader((out / "sweep.csv").open())] == ["ok"]
