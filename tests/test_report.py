"""`lightsum report`: a figure and a table row per run, from the runs' event files and configs."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import FITTED_EPOCHS as EPOCHS, REPO, log_attempt, scalars, tiny
from lightsum.cli import main

def test_report_draws_a_figure_and_a_table(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["report", str(run_dir), "--out", str(tmp_path)])
    png = tmp_path / f"{run_dir.parent.name}_{run_dir.name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    assert imread(png).shape[:2] == (450, 800)
    table = (tmp_path / "report.md").read_text()
    assert table.split("\n\n")[0] in capsys.readouterr().out  # the same table on the console
    row = next(line for line in table.splitlines() if line.startswith(f"| {run_dir.parent.name}/{run_dir.name} "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    series = scalars(run_dir)
    best = max(range(EPOCHS), key=lambda i: (series["val/boundary_accuracy"][i][1], -i))  # the default's monitor
    metrics = ("recall_0", "recall_1", "min_recall", "missed_0", "missed_1", "boundary_accuracy", "average_precision_0", "auroc")
    expected = [f"{series[f'val/{m}'][best][1]:{'.0f' if m.startswith('missed') else '.4f'}}" for m in metrics]
    assert table.splitlines()[0] == ("| run | strategy | recall_0 | recall_1 | min_recall | missed_0 | missed_1 | "
                                     "boundary_accuracy | average_precision_0 | auroc | best epoch | epochs | seconds |")
    assert cells[1] == "boundary 0.5, threshold tuned"
    assert cells[2:10] == expected
    assert cells[10:12] == [str(best), str(EPOCHS)]
    # The best epoch is the one the best checkpoint holds.
    assert (run_dir / "checkpoints" / f"best-epoch={best:03d}.ckpt").is_file()
    assert 0 < float(cells[12]) < 120


def test_a_runs_figure_shows_errors_per_class_on_a_log_axis(run_dir: Path, tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from lightsum import report

    drawn = {}
    original = Figure.savefig
    Figure.savefig = lambda fig, out, **kw: drawn.setdefault("fig", fig) and original(fig, out, **kw)
    try:
        report.plot(report.read_run(run_dir), tmp_path / "x.png")
    finally:
        Figure.savefig = original
    loss, missed = drawn["fig"].axes
    assert loss.get_yscale() == "log" and missed.get_yscale() == "symlog"
    lines = {line.get_label(): list(line.get_ydata()) for line in missed.get_lines()}
    series = scalars(run_dir)
    assert lines == {"class 0 (minority)": [v for _, v in series["val/missed_0"]],
                     "class 1": [v for _, v in series["val/missed_1"]]}


def test_a_full_disk_while_reporting_is_one_line_and_keeps_the_earlier_files(
        run_dir: Path, tmp_path: Path, full_disk, capsys: pytest.CaptureFixture) -> None:
    main(["report", str(run_dir), "--out", str(tmp_path)])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    full_disk(2000)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(run_dir), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    png = tmp_path / f"{run_dir.parent.name}_{run_dir.name}.png"
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"lightsum: error: cannot write {png}: No space left on device"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_report_compares_every_run_under_a_folder(run_dir: Path, tmp_path: Path) -> None:
    root = run_dir.parent.parent
    main(["fit", *tiny(root, epochs=1), "--data.train_distribution=natural", "--data.sampling=undersample",
          "--model.loss=focal", "--trainer.logger.init_args.name=undersample"])
    main(["report", str(root), "--out", str(tmp_path), "--no-plots"])
    rows = [line for line in (tmp_path / "report.md").read_text().splitlines()[2:] if line.startswith("| ")]
    assert [r.split(" | ")[:2] for r in rows] == [
        ["| default/version_0", "boundary 0.5, threshold tuned"],
        ["| undersample/version_0", "undersample 1.0, focal, threshold tuned"],
    ]
    assert not list(tmp_path.glob("*.png"))


def fake_fit(run_dir: Path, min_recall: float = 0.9) -> Path:
    run_dir.mkdir(parents=True)
    log_attempt(run_dir, {0: (min_recall, 0.99)}, "events.out.tfevents.1700000000.node.1.0")
    return run_dir


def table_rows(report_md: Path) -> list[list[str]]:
    lines = report_md.read_text().split("\n\n")[0].splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_report_names_are_unique_and_so_are_the_figure_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two roots that both hold default/version_0: before, one figure overwrote the other.
    first = fake_fit(tmp_path / "a" / "logs" / "default" / "version_0", 0.5)
    second = fake_fit(tmp_path / "b" / "logs" / "default" / "version_0", 0.7)
    fake_fit(tmp_path / "b" / "logs" / "seed" / "version_0", 0.6)
    main(["report", str(first), str(tmp_path / "b"), "--out", str(tmp_path / "out")])
    assert [row[:5:4] for row in table_rows(tmp_path / "out" / "report.md")] == [
        ["a/logs/default/version_0", "0.5000"], ["b/logs/default/version_0", "0.7000"], ["seed/version_0", "0.6000"],
    ]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "a_logs_default_version_0.png", "b_logs_default_version_0.png", "seed_version_0.png",
    ]
    # Inside a run folder, "." is named after the folder (before: "/"), and a folder given twice counts once.
    monkeypatch.chdir(second)
    main(["report", ".", str(second), "--out", str(tmp_path / "here"), "--no-plots"])
    assert [row[0] for row in table_rows(tmp_path / "here" / "report.md")] == ["default/version_0"]


def test_report_skips_folders_without_validation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from torch.utils.tensorboard import SummaryWriter

    fake_fit(tmp_path / "logs" / "default" / "version_0")
    predicted = tmp_path / "logs" / "default" / "version_1"  # what `predict` leaves: an event file, no scalars
    SummaryWriter(predicted).close()
    tested = tmp_path / "logs" / "default" / "version_2"
    with SummaryWriter(tested) as writer:
        writer.add_scalar("test/min_recall", 0.9, 0)
    main(["report", str(tmp_path / "logs"), "--out", str(tmp_path / "out")])
    assert [row[0] for row in table_rows(tmp_path / "out" / "report.md")] == ["default/version_0"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["default_version_0.png"]
    notes = capsys.readouterr().err.strip().splitlines()
    assert [n.split(": no val/min_recall")[0] for n in notes] == [
        f"lightsum: note: report skips {predicted}", f"lightsum: note: report skips {tested}",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tested), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"lightsum: error: report: no run with val/min_recall in {tested}"


@pytest.mark.parametrize(("args", "named"), [([], "the following arguments are required: RUN_DIR"),
                                             (["x", "--bogus"], "unrecognized arguments: --bogus")])
def test_report_argument_errors_are_one_line(args: list[str], named: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"lightsum: error: report: {named} (see lightsum report --help)\n"


def run_without_site_packages(*args: str, env: dict) -> subprocess.CompletedProcess:
    # -S: only the PYTHONPATH given in env, not the installed site-packages.
    return subprocess.run([sys.executable, "-S", "-m", "lightsum", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=180, env=env)


@pytest.fixture
def no_matplotlib_env(tmp_path: Path) -> dict:
    """An environment as after ``pip install lightsum`` without the ``report`` extra: the installed
    packages minus matplotlib (its module and its metadata), so nothing can find or import it."""
    site = tmp_path / "site"
    site.mkdir()
    installed = Path(sysconfig.get_paths()["purelib"])
    for entry in installed.iterdir():
        if not entry.name.startswith(("matplotlib", "mpl_toolkits")) and entry.suffix != ".pth":
            (site / entry.name).symlink_to(entry)
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}


@pytest.mark.parametrize(("arg", "named"), [("nonexistent", "not a directory"), ("empty", "no TensorBoard event files")])
def test_report_errors(arg: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / arg), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.slow
def test_without_matplotlib(run_dir: Path, tmp_path: Path, no_matplotlib_env: dict) -> None:
    proc = run_without_site_packages("report", str(run_dir), "--out", str(tmp_path), env=no_matplotlib_env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pip install 'lightsum[report]'" in proc.stderr.strip().splitlines()[-1]
    proc = run_without_site_packages("report", str(run_dir), "--out", str(tmp_path), "--no-plots", env=no_matplotlib_env)
    assert proc.returncode == 0 and (tmp_path / "report.md").is_file()
    # Training still logs the confusion matrix, as text.
    proc = run_without_site_packages("fit", *tiny(tmp_path / "logs", epochs=1), env=no_matplotlib_env)
    assert proc.returncode == 0, proc.stderr
    assert "matplotlib is not installed" in proc.stderr
    acc = EventAccumulator(str(next((tmp_path / "logs").rglob("version_0"))), size_guidance={"tensors": 0})
    acc.Reload()
    assert "val/confusion_matrix/text_summary" in acc.Tags()["tensors"]


