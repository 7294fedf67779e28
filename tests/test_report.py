"""What users look at: TensorBoard figures (read back and served by a real tensorboard) and `report`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

from conftest import REPO, scalars, tiny
from lightsum.callbacks import ConfusionMatrixPicture, confusion_matrix_markdown
from lightsum.main import main
from lightsum.report import read_run

EPOCHS = 3


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    return main(["fit", *tiny(tmp_path_factory.mktemp("logs"), epochs=EPOCHS)])


@pytest.fixture
def run_dir(fitted) -> Path:
    return Path(fitted.trainer.log_dir)


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_each_validation_epoch_has_a_confusion_matrix_and_pr_curves(fitted, run_dir: Path) -> None:
    acc = events(run_dir)
    val_steps = [s for s, _ in scalars(run_dir)["val/min_recall"]]
    assert len(val_steps) == EPOCHS
    images = acc.Images("val/confusion_matrix")
    assert [i.step for i in images] == val_steps  # none from the sanity check
    assert images[0].width == 360 and images[0].height == 320
    for cls in (0, 1):
        assert [t.step for t in acc.Tensors(f"val/pr_curve_class_{cls}")] == val_steps
    # PR data: TensorBoard's layout is 6 rows (TP, FP, TN, FN, precision, recall) x thresholds;
    # at threshold 0 every sequence is predicted positive: TP = the class's count, TP + FP = all.
    labels = fitted.datamodule.val_set.labels
    for cls in (0, 1):
        pr = make_ndarray(acc.Tensors(f"val/pr_curve_class_{cls}")[-1].tensor_proto)
        assert pr[0, 0] == int((labels == cls).sum()) and pr[0, 0] + pr[1, 0] == len(labels)


def test_confusion_matrix_picture_and_text() -> None:
    matrix = np.array([[3, 1], [2, 114]])
    text = confusion_matrix_markdown(matrix)
    assert "| true 0 | 3 | 1 | 0.7500 |" in text and "| true 1 | 2 | 114 | 0.9828 |" in text
    picture = ConfusionMatrixPicture()
    first, second = picture(matrix, "a"), picture(np.array([[0, 4], [0, 116]]), "a")
    assert first.shape == (320, 360, 3) and first.dtype == np.uint8
    assert not np.array_equal(first, second)  # the reused figure really redraws


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
    best = max(range(EPOCHS), key=lambda i: (series["val/min_recall"][i][1], -i))
    expected = [f"{series[f'val/{m}'][best][1]:.4f}" for m in ("recall_0", "recall_1", "min_recall", "balanced_accuracy", "auroc")]
    assert cells[1] == "oversample 1.0, threshold tuned"
    assert cells[2:7] == expected
    assert cells[7:9] == [str(best), str(EPOCHS)]
    # The best epoch is the one the best checkpoint holds.
    assert (run_dir / "checkpoints" / f"best-epoch={best:03d}.ckpt").is_file()
    assert 0 < float(cells[9]) < 120


def test_report_compares_every_run_under_a_folder(run_dir: Path, tmp_path: Path) -> None:
    root = run_dir.parent.parent
    main(["fit", *tiny(root, epochs=1), "--config", str(REPO / "configs/strategies/undersample.yaml")])
    main(["report", str(root), "--out", str(tmp_path), "--no-plots"])
    rows = [line for line in (tmp_path / "report.md").read_text().splitlines()[2:] if line.startswith("| ")]
    assert [r.split(" | ")[:2] for r in rows] == [
        ["| default/version_0", "oversample 1.0, threshold tuned"],
        ["| undersample/version_0", "undersample 1.0, threshold tuned"],
    ]
    assert not list(tmp_path.glob("*.png"))


def log_attempt(run_dir: Path, epochs: dict[int, tuple[float, float]], name: str) -> None:
    """One attempt of a run, as Lightning logs it: per validated epoch, val/recall_0, val/recall_1,
    val/min_recall and epoch at the step the epoch ended; the event file renamed to ``name``."""
    from torch.utils.tensorboard import SummaryWriter

    before = set(run_dir.glob("events.out.tfevents.*"))
    writer = SummaryWriter(run_dir)
    for epoch, (recall_0, recall_1) in epochs.items():
        step = 10 * epoch + 9
        for tag, value in (("val/recall_0", recall_0), ("val/recall_1", recall_1),
                           ("val/min_recall", min(recall_0, recall_1)), ("epoch", epoch)):
            writer.add_scalar(tag, value, step)
    writer.close()
    (new,) = set(run_dir.glob("events.out.tfevents.*")) - before
    new.rename(run_dir / name)


def test_report_counts_a_resumed_runs_relogged_epochs_once(tmp_path: Path) -> None:
    # A job requeued after epoch 3 resumes from the checkpoint of epoch 1: it logs epochs 2 and 3
    # again, with other values, into a second event file of the same run folder. Both files are
    # named in the same second; as text, the second attempt's counter 10 sorts before 9.
    requeued = tmp_path / "default" / "version_0"
    requeued.mkdir(parents=True)
    log_attempt(requeued, {0: (0.5, 0.9), 1: (0.6, 0.9), 2: (0.7, 0.9), 3: (0.99, 0.995)},
                "events.out.tfevents.1700000000.node-1.4242.9")
    log_attempt(requeued, {2: (0.8, 0.85), 3: (0.9, 0.91), 4: (0.95, 0.96), 5: (0.93, 0.97)},
                "events.out.tfevents.1700000000.node-1.4242.10")
    run = read_run(requeued)
    assert [e for e, _ in run.by_epoch("val/min_recall")] == [0, 1, 2, 3, 4, 5]
    assert run.best == pytest.approx({"recall_0": 0.95, "recall_1": 0.96, "min_recall": 0.95, "epoch": 4, "epochs": 6})
    # A second attempt that stopped before the first one's last epoch: that epoch is not the run's.
    abandoned = tmp_path / "default" / "version_1"
    abandoned.mkdir()
    log_attempt(abandoned, {0: (0.5, 0.9), 1: (0.6, 0.9), 2: (0.7, 0.9), 3: (0.99, 0.995)},
                "events.out.tfevents.1700000000.node-1.4242.0")
    log_attempt(abandoned, {2: (0.8, 0.85)}, "events.out.tfevents.1700000100.node-2.77.0")
    run = read_run(abandoned)
    assert run.best == pytest.approx({"recall_0": 0.8, "recall_1": 0.85, "min_recall": 0.8, "epoch": 2, "epochs": 3})


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


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # -S with an env: only the PYTHONPATH given there, not the installed site-packages.
    flags = ["-S"] if env else []
    return subprocess.run([sys.executable, *flags, "-m", "lightsum", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=180, env=env)


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
def test_report_errors(arg: str, named: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run_cli("report", str(tmp_path / arg), "--out", str(tmp_path / "out"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert named in proc.stderr.strip().splitlines()[-1]


def test_without_matplotlib(run_dir: Path, tmp_path: Path, no_matplotlib_env: dict) -> None:
    proc = run_cli("report", str(run_dir), "--out", str(tmp_path), env=no_matplotlib_env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pip install 'lightsum[report]'" in proc.stderr.strip().splitlines()[-1]
    proc = run_cli("report", str(run_dir), "--out", str(tmp_path), "--no-plots", env=no_matplotlib_env)
    assert proc.returncode == 0 and (tmp_path / "report.md").is_file()
    # Training still logs the confusion matrix, as text.
    proc = run_cli("fit", *tiny(tmp_path / "logs", epochs=1), env=no_matplotlib_env)
    assert proc.returncode == 0, proc.stderr
    assert "matplotlib is not installed" in proc.stderr
    acc = EventAccumulator(str(next((tmp_path / "logs").rglob("version_0"))), size_guidance={"tensors": 0})
    acc.Reload()
    assert "val/confusion_matrix/text_summary" in acc.Tags()["tensors"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_a_real_tensorboard_server_shows_the_run(run_dir: Path) -> None:
    logdir = run_dir.parent.parent
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast=false", "--reload_interval=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}/data"
    run = f"{run_dir.parent.name}/{run_dir.name}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if run in get_json(f"{base}/runs") and run in get_json(f"{base}/plugin/images/tags"):
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read().decode()
            assert time.monotonic() < deadline, "tensorboard did not list the run within 90 s"
            time.sleep(0.5)
        scalar_tags = set(get_json(f"{base}/plugin/scalars/tags")[run])
        assert {"train/loss", "train/loss_epoch", "train/recall_0", "train/recall_1", "val/loss",
                "val/recall_0", "val/recall_1", "val/min_recall", "val/auroc"} <= scalar_tags
        assert "val/confusion_matrix" in get_json(f"{base}/plugin/images/tags")[run]
        images = get_json(f"{base}/plugin/images/images?run={run}&tag=val/confusion_matrix")
        assert len(images) == EPOCHS
        assert {"val/pr_curve_class_0", "val/pr_curve_class_1"} <= set(get_json(f"{base}/plugin/pr_curves/tags")[run])
        experiment = get_json(f"{base}/plugin/hparams/experiment", {"experimentName": ""})
        assert "val/min_recall" in {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert "hidden_size" in {h["name"] for h in experiment["hparamInfos"]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_figures_can_be_switched_off(tmp_path: Path) -> None:
    cli = main(["fit", *tiny(tmp_path, epochs=1), "--figures.every_n_epochs=0"])
    acc = events(Path(cli.trainer.log_dir))
    assert acc.Tags()["images"] == [] and acc.Tags()["tensors"] == []
    assert "val/min_recall" in acc.Tags()["scalars"]
