"""What TensorBoard shows: confusion matrices, PR curves, HPARAMS, read back and served by a real tensorboard."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import FITTED_EPOCHS as EPOCHS
from conftest import scalars, tiny
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

from lightsum.callbacks.figures import ConfusionMatrixPicture, confusion_matrix_markdown, percent
from lightsum.cli import main


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


def test_a_single_miss_is_never_rounded_away() -> None:
    # 1 of 33,333 majority sequences missed (recall 0.99997): before, "1 / 0.00%" and a recall of 1.0000.
    matrix = np.array([[400, 0], [1, 33_332]])
    assert "| true 1 | 1 | 33332 | 0.99997 |" in confusion_matrix_markdown(matrix)
    picture = ConfusionMatrixPicture()
    picture(matrix, "test, epoch 9, threshold 0.5")
    assert {ij: cell.get_text() for ij, cell in picture.cells.items()} == {
        (0, 0): "400\n100.00%",
        (0, 1): "0\n0.00%",
        (1, 0): "1\n<0.01%",
        (1, 1): "33332\n>99.99%",
    }
    assert [percent(1, 39_530), percent(2, 39_530), percent(39_529, 39_530)] == ["<0.01%", "0.01%", ">99.99%"]


def test_figures_can_be_switched_off(tmp_path: Path) -> None:
    cli = main(["fit", *tiny(tmp_path, epochs=1), "--figures.every_n_epochs=0"])
    acc = events(Path(cli.trainer.log_dir))
    assert acc.Tags()["images"] == [] and acc.Tags()["tensors"] == []
    assert "val/min_recall" in acc.Tags()["scalars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.mark.slow
def test_a_real_tensorboard_server_shows_the_run(run_dir: Path) -> None:
    logdir = run_dir.parent.parent
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast=false",
            "--reload_interval=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
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
        assert {
            "train/loss",
            "train/loss_epoch",
            "train/recall_0",
            "train/recall_1",
            "val/loss",
            "val/recall_0",
            "val/recall_1",
            "val/min_recall",
            "val/auroc",
        } <= scalar_tags
        assert "val/confusion_matrix" in get_json(f"{base}/plugin/images/tags")[run]
        images = get_json(f"{base}/plugin/images/images?run={run}&tag=val/confusion_matrix")
        assert len(images) == EPOCHS
        assert {"val/pr_curve_class_0", "val/pr_curve_class_1"} <= set(get_json(f"{base}/plugin/pr_curves/tags")[run])
        experiment = get_json(f"{base}/plugin/hparams/experiment", {"experimentName": ""})
        assert "val/min_recall" in {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"model.hidden_size", "data.sampling"} <= {h["name"] for h in experiment["hparamInfos"]}
    finally:
        server.terminate()
        server.wait(timeout=30)
