"""`lightsum report`: a figure and a table row per run, from the runs' event files and configs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
from conftest import FITTED_EPOCHS as EPOCHS
from conftest import REPO, log_attempt, scalars, tiny
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightsum import report
from lightsum.cli import main

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def test_report_draws_a_figure_and_a_table(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["report", str(run_dir), "--out", str(tmp_path)])
    png = tmp_path / f"{run_dir.parent.name}_{run_dir.name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    assert imread(png).shape[:2] == (480, 1300)
    table = (tmp_path / "report.md").read_text()
    assert table.split("\n\n")[0] in capsys.readouterr().out  # the same table on the console
    row = next(line for line in table.splitlines() if line.startswith(f"| {run_dir.parent.name}/{run_dir.name} "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    series = scalars(run_dir)
    best = max(range(EPOCHS), key=lambda i: (series["val/boundary_accuracy"][i][1], -i))  # the default's monitor
    metrics = (
        "recall_0",
        "recall_1",
        "min_recall",
        "missed_0",
        "missed_1",
        "boundary_accuracy",
        "average_precision_minority",
        "auroc",
    )
    expected = [
        f"{series[f'val/{m}'][best][1]:.0f}" if m.startswith("missed") else report.fraction(series[f"val/{m}"][best][1])
        for m in metrics
    ]
    assert table.splitlines()[0] == (
        "| run | strategy | recall_0 | recall_1 | min_recall | missed_0 | missed_1 | "
        "boundary_accuracy | average_precision_minority | auroc | best epoch | epochs | seconds |"
    )
    assert cells[1] == "boundary 0.75, threshold tuned"
    assert cells[2:10] == expected
    assert cells[10:12] == [str(best), str(EPOCHS)]
    # The best epoch is the one the best checkpoint holds.
    assert (run_dir / "checkpoints" / f"best-epoch={best:03d}.ckpt").is_file()
    assert 0 < float(cells[12]) < 120


def drawn(run: Path) -> Figure:
    """The report's figure of a run folder, drawn, so that its tick labels are set."""
    fig = report.figure(report.read_run(run))
    fig.canvas.draw()
    return fig


def tick_labels(ax) -> list[str]:
    """The y tick labels a reader sees: those inside the axis's limits."""
    low, high = ax.get_ylim()
    return [t.get_text() for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high and t.get_text()]


def best_marks(ax) -> list:
    return [line for line in ax.get_lines() if line.get_label().startswith("best checkpoint")]


def test_a_runs_figure_reads_on_its_own(fitted, run_dir: Path) -> None:
    fig = drawn(run_dir)
    loss, minority, majority = fig.axes
    labels = fitted.datamodule.val_set.labels
    sizes = [int((labels == c).sum()) for c in (0, 1)]
    series = scalars(run_dir)
    # Each class's misses against its own count, read from the run's own metrics.
    assert minority.get_title() == f"minority (class 0): {sizes[0]:,} validation sequences"
    assert majority.get_title() == f"majority (class 1): {sizes[1]:,} validation sequences"
    assert [ax.get_ylabel() for ax in (minority, majority)] == [f"sequences missed, of {n:,}" for n in sizes]
    for cls, ax in enumerate((minority, majority)):
        (missed,) = [line for line in ax.get_lines() if line.get_label() == "missed"]
        assert list(missed.get_ydata()) == [v for _, v in series[f"val/missed_{cls}"]]
        assert tick_labels(ax) and all(re.fullmatch(r"\d[\d,]*", t) for t in tick_labels(ax))  # plain integers
        assert any(line.get_visible() for line in ax.get_ygridlines())
    assert tick_labels(loss) and all(re.fullmatch(r"\d+(\.\d+)?", t) for t in tick_labels(loss))  # no 10^k
    # The best checkpoint's epoch (the default's monitor: val/boundary_accuracy), marked and labelled in each panel.
    best = max(range(EPOCHS), key=lambda i: (series["val/boundary_accuracy"][i][1], -i))
    assert (run_dir / "checkpoints" / f"best-epoch={best:03d}.ckpt").is_file()
    for ax in fig.axes:
        (mark,) = best_marks(ax)
        assert list(mark.get_xdata()) == [best, best]
        assert mark.get_label() in [t.get_text() for t in ax.get_legend().get_texts()]
    assert (
        best_marks(minority)[0].get_label()
        == f"best checkpoint (epoch {best}): {series['val/missed_0'][best][1]:.0f} missed"
    )
    # The strategy in words, and why the two loss curves differ.
    assert fig.get_suptitle() == (
        f"{run_dir.parent.name}/{run_dir.name}: "
        "75% of the training data with sums near 100 (95-104), decision threshold tuned"
    )
    assert [t.get_text() for t in fig.texts] == [
        fig.get_suptitle(),  # the title, then the caption
        "The training and validation losses are not comparable: "
        "75% of the training data with sums near 100 (95-104) against natural validation data.",
    ]


def log_validation(run_dir: Path, epochs: list[dict[str, float]]) -> Path:
    """A fit's validation points as Lightning logs them: each epoch's ``val/*`` values and ``epoch``
    at the step the epoch ended (no config.yaml: monitor val/min_recall)."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir.mkdir(parents=True)
    with SummaryWriter(run_dir) as writer:
        for epoch, values in enumerate(epochs):
            for tag, value in {**{f"val/{k}": v for k, v in values.items()}, "epoch": epoch}.items():
                writer.add_scalar(tag, value, 10 * epoch + 9)
    return run_dir


def validation(missed_0: int, missed_1: int, sizes: tuple[int, int] = (470, 39_530)) -> dict[str, float]:
    """One epoch's validation metrics with these misses among ``sizes`` sequences of class 0 and 1."""
    recalls = [1 - m / n for m, n in zip((missed_0, missed_1), sizes)]
    return {
        "recall_0": recalls[0],
        "recall_1": recalls[1],
        "min_recall": min(recalls),
        "missed_0": missed_0,
        "missed_1": missed_1,
        "sequences": sum(sizes),
    }


def test_counts_spanning_decades_get_plain_integer_ticks(tmp_path: Path) -> None:
    # A first epoch with hundreds of misses beside later ones with a few: a symlog axis, labelled 0, 1, 2, 5, 10, ...
    run = log_validation(
        tmp_path / "default" / "version_0", [validation(300, 50), validation(28, 3), validation(4, 1), validation(0, 0)]
    )
    fig = drawn(run)
    loss, minority, majority = fig.axes
    assert minority.get_yscale() == "symlog"
    assert tick_labels(minority) == ["0", "1", "2", "5", "10", "20", "50", "100", "200", "500"]
    assert tick_labels(majority) == ["0", "1", "2", "5", "10", "20", "50", "100"]
    assert minority.get_title() == "minority (class 0): 470 validation sequences"
    assert majority.get_title() == "majority (class 1): 39,530 validation sequences"
    assert best_marks(majority)[0].get_label() == "best checkpoint (epoch 3): 0 missed"
    assert [t.get_text() for t in fig.texts] == [fig.get_suptitle()]  # no config: no caption
    # The whole class in view (the seed run: 15 to 20 of 20 missed): a line at it, ticks every 5.
    run = log_validation(
        tmp_path / "seed" / "version_0",
        [validation(20, 0, (20, 1980)), validation(15, 2, (20, 1980)), validation(18, 1, (20, 1980))],
    )
    minority = drawn(run).axes[1]
    assert minority.get_yscale() == "linear"
    assert tick_labels(minority) == ["0", "5", "10", "15", "20", "25"]
    assert "all 20 of the class" in [line.get_label() for line in minority.get_lines()]


@pytest.mark.parametrize(
    ("config", "words", "caption"),
    [
        (
            {"data": {"train_distribution": "natural", "sampling": "none"}, "model": {"decision_threshold": 0.5}},
            "natural training data, decision threshold 0.5",
            None,
        ),
        (
            {
                "data": {"train_distribution": "natural", "sampling": "undersample", "sampling_ratio": 1.0},
                "model": {"loss": "focal", "decision_threshold": "tuned"},
            },
            "natural training data, majority undersampled to 1:1, focal loss, decision threshold tuned",
            "The training and validation losses are not comparable: natural training data, majority undersampled to 1:1 "
            "against natural validation data.",
        ),
        (
            {"data": {"train_distribution": "balanced", "sampling_ratio": 0.25}, "model": {"pos_weight": "balanced"}},
            "training data drawn class-balanced (1:4 minority:majority), loss weighted to balance the classes, "
            "decision threshold 0.5",
            "The training and validation losses are not comparable: training data drawn class-balanced "
            "(1:4 minority:majority) against natural validation data.",
        ),
        (
            {
                "data": {"train_distribution": "boundary", "boundary_share": 0.3, "boundary_window": 5},
                "model": {"loss": "logit_adjusted"},
            },
            "30% of the training data with sums near 100 (95-104), logit-adjusted loss, decision threshold 0.5",
            "The training and validation losses are not comparable: 30% of the training data with sums near 100 (95-104) "
            "against natural validation data; the training loss adds logit adjustment's offset, the validation loss does not.",
        ),
    ],
    ids=["seed", "undersample", "balanced", "boundary"],
)
def test_strategies_in_plain_words(config: dict, words: str, caption: str | None) -> None:
    assert report.strategy_words(config) == words
    assert report.caption(config) == caption


# --- rounding never hides an error ---------------------------------------------------------------

ONE_MISS = [(33_333, "0.99997"), (333_333, "0.999997")]  # 1 miss in n: recall 1 - 1/n


def test_fraction_never_rounds_a_miss_away() -> None:
    assert [report.fraction(v) for v in (0.9, 0.99996, 0.999997, 1.0, 0.0)] == [
        "0.9000",
        "0.99996",
        "0.999997",
        "1.0000",
        "0.0000",
    ]
    assert report.fraction(1 - 2.0**-24, 5) == "0.9999999"  # the float32 closest to 1 from below


@pytest.mark.parametrize(("size", "shown"), ONE_MISS)
def test_a_recall_with_one_miss_is_not_printed_as_one(size: int, shown: str, tmp_path: Path) -> None:
    run = log_validation(
        tmp_path / "logs" / "default" / "version_0", [validation(5, 3, (400, size)), validation(0, 1, (400, size))]
    )
    main(["report", str(run), "--out", str(tmp_path / "out"), "--no-plots"])
    (row,) = table_rows(tmp_path / "out" / "report.md")
    assert row[2:7] == ["1.0000", shown, shown, "0", "1"]  # recall_0, recall_1, min_recall, missed_0, missed_1
    summary = report.fit_summary(
        run, SimpleNamespace(best_model_path="best-epoch=001.ckpt", monitor="val/min_recall"), []
    )
    assert f"recall_0 1.00000  recall_1 {shown}  min_recall {shown}" in summary
    assert f"missed 0 of 400 in class 0 + 1 of {size:,} in class 1" in summary  # the class sizes from epoch 0's misses


def test_class_sizes_come_only_from_recalls_that_tell_them_exactly(tmp_path: Path) -> None:
    # One miss in 333,333 leaves a float32 recall unsure of that class's size by thousands: no size is claimed.
    run = log_validation(tmp_path / "default" / "version_0", [validation(0, 1, (400, 333_333))])
    assert report.class_sizes(report.read_run(run)) is None
    summary = report.fit_summary(
        run, SimpleNamespace(best_model_path="best-epoch=000.ckpt", monitor="val/min_recall"), []
    )
    assert "missed 0 + 1 of 333,733" in summary
    assert drawn(run).axes[1].get_title() == "class 0: validation sequences"


@pytest.mark.parametrize(
    ("max_epochs", "advice"),
    [
        (EPOCHS, "train further: the same command with --ckpt_path last and a larger --trainer.max_epochs"),
        (EPOCHS + 2, "continue training: the same command with --ckpt_path last"),
    ],
    ids=["finished", "stopped early"],
)
def test_the_fit_summary_says_how_to_train_on(max_epochs: int, advice: str, run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "default" / "version_0"
    shutil.copytree(run_dir, run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace(f"max_epochs: {EPOCHS}\n", f"max_epochs: {max_epochs}\n"))
    summary = report.fit_summary(run, SimpleNamespace(best_model_path="", monitor="val/boundary_accuracy"), [])
    assert f"  last checkpoint  {run / 'checkpoints' / 'last.ckpt'}  ({advice})" in summary.splitlines()


@pytest.mark.slow  # a real fit: the system tier (the fast tier stays under a minute)
def test_a_full_disk_while_reporting_is_one_line_and_keeps_the_earlier_files(
    run_dir: Path, tmp_path: Path, full_disk, capsys: pytest.CaptureFixture
) -> None:
    main(["report", str(run_dir), "--out", str(tmp_path)])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    full_disk(2000)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(run_dir), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    png = tmp_path / f"{run_dir.parent.name}_{run_dir.name}.png"
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == f"lightsum: error: cannot write {png}: No space left on device"
    )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_report_compares_every_run_under_a_folder(run_dir: Path, tmp_path: Path) -> None:
    root = run_dir.parent.parent
    main(
        [
            "fit",
            *tiny(root, epochs=1),
            "--data.train_distribution=natural",
            "--data.sampling=undersample",
            "--model.loss=focal",
            "--trainer.logger.init_args.name=undersample",
        ]
    )
    main(["report", str(root), "--out", str(tmp_path), "--no-plots"])
    rows = [line for line in (tmp_path / "report.md").read_text().splitlines()[2:] if line.startswith("| ")]
    assert [r.split(" | ")[:2] for r in rows] == [
        ["| default/version_0", "boundary 0.75, threshold tuned"],
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
        ["a/logs/default/version_0", "0.5000"],
        ["b/logs/default/version_0", "0.7000"],
        ["seed/version_0", "0.6000"],
    ]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "a_logs_default_version_0.png",
        "b_logs_default_version_0.png",
        "seed_version_0.png",
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
        f"lightsum: note: report skips {predicted}",
        f"lightsum: note: report skips {tested}",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tested), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == f"lightsum: error: report: no run with val/min_recall in {tested}"
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [([], "the following arguments are required: RUN_DIR"), (["x", "--bogus"], "unrecognized arguments: --bogus")],
)
def test_report_argument_errors_are_one_line(args: list[str], named: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"lightsum: error: report: {named} (see lightsum report --help)\n"


def run_without_site_packages(*args: str, env: dict) -> subprocess.CompletedProcess:
    # -S: only the PYTHONPATH given in env, not the installed site-packages.
    return subprocess.run(
        [sys.executable, "-S", "-m", "lightsum", *args], capture_output=True, text=True, cwd=REPO, timeout=180, env=env
    )


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


@pytest.mark.parametrize(
    ("arg", "named"), [("nonexistent", "not a directory"), ("empty", "no TensorBoard event files")]
)
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
    proc = run_without_site_packages(
        "report", str(run_dir), "--out", str(tmp_path), "--no-plots", env=no_matplotlib_env
    )
    assert proc.returncode == 0 and (tmp_path / "report.md").is_file()
    # Training still logs the confusion matrix, as text.
    proc = run_without_site_packages("fit", *tiny(tmp_path / "logs", epochs=1), env=no_matplotlib_env)
    assert proc.returncode == 0, proc.stderr
    assert "matplotlib is not installed" in proc.stderr
    acc = EventAccumulator(str(next((tmp_path / "logs").rglob("version_0"))), size_guidance={"tensors": 0})
    acc.Reload()
    assert "val/confusion_matrix/text_summary" in acc.Tags()["tensors"]


# --- damaged runs and outputs that are not report's to replace ---------------------------------


def inputs(*folders: Path) -> dict[Path, bytes]:
    """The bytes of every file under ``folders``: what report must leave as it was."""
    return {f: f.read_bytes() for folder in folders for f in folder.rglob("*") if f.is_file() and not f.is_symlink()}


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (
            "best_checkpoint:\n  monitor: [val/min_recall\n",
            "not valid YAML (line 3, column 1): expected ',' or ']', but got '<stream end>'",
        ),
        (
            "- a list\n- not a mapping\n",
            "not a lightsum config: a YAML mapping whose data, model, best_checkpoint are mappings",
        ),
        ("data: 3\n", "not a lightsum config: a YAML mapping whose data, model, best_checkpoint are mappings"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a config file: binary data, not YAML text"),
        (b"\x00\x01\x02", "not a config file: binary data, not YAML text"),
        (None, "a folder, not a config file"),
    ],
    ids=["invalid", "list", "section", "binary", "control", "folder"],
)
def test_a_broken_config_is_one_line_naming_it(
    config: str | bytes | None, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = fake_fit(tmp_path / "logs" / "default" / "version_0")
    target = run / "config.yaml"
    if config is None:
        target.mkdir()
    elif isinstance(config, bytes):
        target.write_bytes(config)
    else:
        target.write_text(config)
    before = inputs(run)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(run), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"lightsum: error: report: {target}: {problem}\n"
    assert inputs(run) == before and not (tmp_path / "out").exists()


def test_a_report_of_many_runs_skips_a_damaged_one_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = fake_fit(tmp_path / "logs" / "default" / "version_0")
    broken = fake_fit(tmp_path / "logs" / "default" / "version_1")
    (broken / "config.yaml").write_text("model: {hidden_size: 8\n")
    folder = fake_fit(tmp_path / "logs" / "default" / "version_2")
    (folder / "events.out.tfevents.1700000100.node.2.0").mkdir()
    before = inputs(tmp_path / "logs")
    main(["report", str(tmp_path / "logs"), "--out", str(tmp_path / "out"), "--no-plots"])
    assert [row[0] for row in table_rows(tmp_path / "out" / "report.md")] == [f"default/{good.name}"]
    assert capsys.readouterr().err.splitlines() == [
        f"lightsum: note: report skips {broken}: config.yaml: not valid YAML (line 2, column 1): "
        "expected ',' or '}', but got '<stream end>'",
        f"lightsum: note: report skips {folder}: events.out.tfevents.1700000100.node.2.0: a folder, not an event file",
    ]
    assert inputs(tmp_path / "logs") == before


@pytest.mark.parametrize("out", ["/dev/null", "/dev/full"])
def test_out_must_be_a_folder(out: str, run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(run_dir), "--out", out])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"lightsum: error: report: --out: {out} is not a folder\n"


def test_an_out_folder_report_cannot_write(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: False if Path(path) == tmp_path else access(path, mode, **kw)
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(run_dir), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"lightsum: error: report: --out: cannot write {tmp_path / 'out'}: no write permission in {tmp_path}\n"
    )


@pytest.mark.parametrize(
    "kind", ["folder", "fifo", "link to config.yaml", "link to an event file", "link to /dev/null"]
)
@pytest.mark.parametrize("output", ["report.md", "figure"])
def test_report_replaces_only_regular_files(
    kind: str, output: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = fake_fit(tmp_path / "logs" / "default" / "version_0")
    (run / "config.yaml").write_text("data: {}\n")
    out = tmp_path / "out"
    out.mkdir()
    target = out / ("report.md" if output == "report.md" else "default_version_0.png")
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)  # writing it would block; renaming over it would replace it
    else:
        linked = {
            "link to config.yaml": run / "config.yaml",
            "link to /dev/null": Path("/dev/null"),
            "link to an event file": next(run.glob("events.out.tfevents.*")),
        }[kind]
        target.symlink_to(linked)
    before = inputs(run)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(run), "--out", str(out)])
    assert exit_info.value.code == 2
    what = {"folder": "a folder", "fifo": "a fifo, device or socket"}.get(
        kind, f"a link to {os.readlink(target) if target.is_symlink() else ''}"
    )
    assert capsys.readouterr().err == (
        f"lightsum: error: report: {target} is {what}; report replaces only regular files: "
        "remove it or choose another --out\n"
    )
    assert inputs(run) == before
    assert [p.name for p in out.iterdir()] == [target.name]  # nothing written


def test_an_overwritten_report_keeps_its_permissions(tmp_path: Path) -> None:
    run = fake_fit(tmp_path / "logs" / "default" / "version_0")
    out = tmp_path / "out"
    main(["report", str(run), "--out", str(out)])
    (out / "report.md").chmod(0o600)
    (out / "default_version_0.png").chmod(0o640)
    main(["report", str(run), "--out", str(out)])
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "report.md": 0o600,
        "default_version_0.png": 0o640,
    }
