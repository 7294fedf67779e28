"""Confusion-matrix images and per-class PR curves in TensorBoard after each evaluation."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_warn
from torchmetrics.functional.classification import binary_confusion_matrix

from lightsum.classifier import evaluated_at
from lightsum.errors import check_arguments
from lightsum.report import fraction

_RULES = {"every_n_epochs": (lambda v: v >= 0, ">= 0 (0: no figures)"), "pr_thresholds": (lambda v: v >= 2, ">= 2")}


class EvaluationFigures(pl.Callback):
    """After each validation (and test) epoch: a confusion-matrix image and PR curves in TensorBoard.

    The confusion matrix is drawn with matplotlib (``pip install 'lightsum[report]'``); without
    it the counts are logged as a text table instead. PR curves are TensorBoard's own, one per
    class, so the minority class gets its own curve rather than hiding under the majority's.

    Args:
        every_n_epochs: draw every n-th validation epoch; 0 turns the figures off.
        pr_thresholds: thresholds per PR curve (TensorBoard bins the probabilities).
    """

    def __init__(self, every_n_epochs: int = 1, pr_thresholds: int = 201) -> None:
        check_arguments("figures", {"every_n_epochs": every_n_epochs, "pr_thresholds": pr_thresholds}, _RULES)
        self.every_n_epochs = every_n_epochs
        self.pr_thresholds = pr_thresholds
        self._picture: ConfusionMatrixPicture | None = None
        self._has_matplotlib = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Import matplotlib and build the figure now, a one-off: not inside the first epoch that draws.
        if (
            self.every_n_epochs
            and trainer.global_rank == 0
            and any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers)
        ):
            self._ensure_picture()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.every_n_epochs or trainer.current_epoch % self.every_n_epochs:
            return
        self._draw(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs:
            self._draw(trainer, pl_module, "test")

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        outputs = pl_module.eval_outputs.pop(stage, None)
        if outputs is None or trainer.global_rank != 0:
            return  # every rank holds the gathered outputs; rank 0 draws
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers:
            return
        probs, target = (t.detach().float().cpu() for t in outputs)
        threshold = float(pl_module.decision_threshold)
        matrix = binary_confusion_matrix((probs >= threshold).long(), target.long()).numpy()
        epoch, step = evaluated_at(pl_module)  # where this evaluation's scalars are too
        for writer in writers:
            for cls, (labels, scores) in enumerate(((target == 0, 1 - probs), (target == 1, probs))):
                writer.add_pr_curve(
                    f"{stage}/pr_curve_class_{cls}",
                    labels.numpy(),
                    scores.numpy(),
                    step,
                    num_thresholds=self.pr_thresholds,
                )
            image = self._image(matrix, f"{stage}, epoch {epoch}, threshold {threshold:.3g}")
            if image is not None:
                writer.add_image(f"{stage}/confusion_matrix", image, step, dataformats="HWC")
            else:
                writer.add_text(f"{stage}/confusion_matrix", confusion_matrix_markdown(matrix), step)

    def _image(self, matrix: np.ndarray, title: str) -> np.ndarray | None:
        self._ensure_picture()
        return self._picture(matrix, title) if self._picture is not None else None

    def _ensure_picture(self) -> None:
        if self._picture is None and self._has_matplotlib:
            try:
                self._picture = ConfusionMatrixPicture()
            except ImportError:
                self._has_matplotlib = False
                rank_zero_warn(
                    "matplotlib is not installed: confusion matrices go to the TEXT tab "
                    "(pip install 'lightsum[report]' for images)"
                )


def confusion_matrix_markdown(matrix: np.ndarray) -> str:
    """A 2x2 confusion matrix (rows: true class, columns: predicted) as a markdown table; a recall
    below 1 never prints as 1.0000 (``report.fraction``)."""
    rows = [
        f"| true {c} | {matrix[c, 0]} | {matrix[c, 1]} | {fraction(matrix[c, c] / max(matrix[c].sum(), 1))} |"
        for c in (0, 1)
    ]
    return "\n".join(["| | predicted 0 | predicted 1 | recall |", "| --- | --- | --- | --- |", *rows])


class ConfusionMatrixPicture:
    """Draws 2x2 confusion matrices as RGB uint8 arrays (H, W, 3) with matplotlib.

    Colours are row-normalised (each true class's recall), so the 1% minority row is as visible
    as the majority's; each cell shows its count and its share of the row. One figure is built
    once and updated per call: redrawing one is cheaper than making a new figure.

    Raises:
        ImportError: matplotlib is not installed.
    """

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.6, 3.2), dpi=100)
        self.canvas = FigureCanvasAgg(self.figure)  # no pyplot: no global state, no GUI backend
        ax = self.figure.add_subplot()
        self.heatmap = ax.imshow(np.eye(2), cmap="Blues", vmin=0, vmax=1)
        self.cells = {(i, j): ax.text(j, i, "", ha="center", va="center", fontsize=9) for i in (0, 1) for j in (0, 1)}
        ax.set(xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="true")
        self.title = ax.set_title("", fontsize=8)
        self.figure.subplots_adjust(left=0.18, bottom=0.16, right=0.95, top=0.9)

    def __call__(self, matrix: np.ndarray, title: str) -> np.ndarray:
        rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        self.heatmap.set_data(rates)
        for (i, j), count in np.ndenumerate(matrix):
            self.cells[i, j].set_text(f"{count}\n{percent(count, matrix[i].sum())}")
            self.cells[i, j].set_color("white" if rates[i, j] > 0.5 else "black")
        self.title.set_text(title)
        self.canvas.draw()
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


def percent(count: int, total: int) -> str:
    """``count`` as a percentage of ``total`` with two decimals, never rounded to 0.00% or 100.00%
    when it is neither: 1 miss in 39,530 reads ``<0.01%``, not ``0.00%``, beside its count."""
    text = f"{count / max(total, 1):.2%}"
    if count > 0 and text == "0.00%":
        return "<0.01%"
    if count < total and text == "100.00%":
        return ">99.99%"
    return text
