"""Per-class metrics (torchmetrics), the evaluation's gathered scores, and decision-threshold tuning."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_confusion_matrix,
    binary_roc,
)
from torchmetrics.utilities import dim_zero_cat


def confusion_metrics(matrix: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-class figures of a 2x2 confusion matrix (rows: true class, columns: predicted).

    Returns:
        recall_0 (the minority class here), recall_1, min_recall (the headline: the worse of the
        two), balanced_accuracy, accuracy, and missed_0 / missed_1: the sequences of each class
        classified wrong (counts tell 0.997 from 0.9995 at a glance). A class with no sequence has
        recall 0, as in torchmetrics.
    """
    matrix = matrix.float()
    recall = matrix.diagonal() / matrix.sum(1).clamp_min(1)
    return {
        "recall_0": recall[0],
        "recall_1": recall[1],
        "min_recall": recall.min(),
        "balanced_accuracy": recall.mean(),
        "accuracy": matrix.diagonal().sum() / matrix.sum().clamp_min(1),
        "missed_0": matrix[0, 1],
        "missed_1": matrix[1, 0],
    }


def class_metrics(
    probs: torch.Tensor, target: torch.Tensor, threshold: float | torch.Tensor
) -> dict[str, torch.Tensor]:
    """All headline metrics of one evaluation: ``confusion_metrics`` at ``threshold`` (predict 1
    when ``probs >= threshold``), and the threshold-free auroc and average precision of each class
    (``average_precision_0`` ranks class 0 by ``1 - p``: class 1's AP is ~1 at 98.8% prevalence
    whatever the model, and says nothing), and ``average_precision_minority``, that of the class rarer
    in this set."""
    target = target.long()
    preds = (probs >= threshold).long()  # labels, so torchmetrics applies no threshold of its own
    values = confusion_metrics(binary_confusion_matrix(preds, target, validate_args=False))
    values["auroc"] = binary_auroc(probs, target)
    values["average_precision_0"] = binary_average_precision(1 - probs, 1 - target)
    values["average_precision_1"] = binary_average_precision(probs, target)
    # The minority measured on the set itself (class 0 for digit sums, often class 1 in users' data).
    minority = 0 if 2 * int(target.sum()) >= len(target) else 1
    values["average_precision_minority"] = values[f"average_precision_{minority}"]
    return values


class ConfusionCounts(Metric):
    """The 2x2 confusion counts of 0/1 predictions, streamed: the training recalls.

    ``BinaryStatScores``' four states under its names (``tp``, ``fp``, ``tn``, ``fn``: what
    checkpoints hold), filled by one comparison per update instead of its dozen tensor ops: this
    runs at every training step, where every op is a share of a small step. (Not ``bincount``:
    on a GPU it reads its input's maximum back to the host, a sync every step.) ``compute()`` sums
    over ranks and returns the matrix, rows the true class.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("tp", "fp", "tn", "fn"):
            self.add_state(name, default=torch.tensor(0), dist_reduce_fx="sum")
        self.register_buffer("cells", torch.arange(4), persistent=False)  # tn, fp, fn, tp as 2 x true + predicted

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        counts = ((target.long() * 2 + preds.long()).unsqueeze(1) == self.cells).sum(0)  # tn, fp, fn, tp
        for state, count in zip((self.tn, self.fp, self.fn, self.tp), counts):
            state.add_(count)  # in place: assigning a state goes through Module.__setattr__

    def compute(self) -> torch.Tensor:
        return torch.stack([self.tn, self.fp, self.fn, self.tp]).view(2, 2)


class EvaluationScores(Metric):
    """Every logit and label of one evaluation set; ``compute()`` gathers them from every rank.

    Evaluation keeps every score rather than streaming thresholded counts: AUROC is then exact,
    and the decision threshold can be tuned on the whole set before any thresholded metric.

    Args:
        weighted: also keep a weight per sequence (``update(logits, target, weights)``).
    """

    full_state_update = False

    def __init__(self, weighted: bool = False) -> None:
        super().__init__()
        self.weighted = weighted
        for name in ("logits", "target", "weights") if weighted else ("logits", "target"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        # float32 whatever the precision: metrics and threshold tuning need the resolution.
        self.logits.append(logits.float())
        self.target.append(target)
        if self.weighted:
            self.weights.append(weights.float())

    def compute(self) -> tuple[torch.Tensor, ...]:
        return tuple(dim_zero_cat(getattr(self, name)) for name in ("logits", "target", "weights")[: 2 + self.weighted])

    def gathered(self) -> tuple[torch.Tensor, ...]:
        """``compute()`` as 1-D tensors, also for a single score (torchmetrics squeezes those to 0-D)."""
        return tuple(t.reshape(-1) for t in self.compute())


def weighted_roc(probs: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``binary_roc`` with a weight per score: (fpr, tpr, thresholds), thresholds descending from 1,
    each the lowest score predicted 1 at its point (torchmetrics' convention; it takes no weights)."""
    keep = weights > 0
    probs, target, weights = probs[keep], target[keep].bool(), weights[keep].double()
    order = probs.argsort(descending=True, stable=True)
    probs, target, weights = probs[order], target[order], weights[order]
    tp = (weights * target).cumsum(0)
    fp = (weights * ~target).cumsum(0)
    last = torch.cat([probs[1:] != probs[:-1], torch.ones(1, dtype=torch.bool, device=probs.device)])  # ends of ties
    zero = torch.zeros(1, dtype=torch.float64, device=probs.device)
    tpr = torch.cat([zero, tp[last]]) / tp[-1].clamp_min(1e-300)
    fpr = torch.cat([zero, fp[last]]) / fp[-1].clamp_min(1e-300)
    return fpr, tpr, torch.cat([torch.ones(1, dtype=probs.dtype, device=probs.device), probs[last]])


def tune_threshold(probs: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """The decision threshold that maximises balanced accuracy on (probs, target), each score
    counted with its weight when ``weights`` are given (of a weighted sample of a distribution).

    A well-trained model separates a validation set over a whole range of thresholds; taking the
    middle of that best range (in logit space) rather than its edge keeps the threshold away from
    the few validation scores that happen to bound it.
    """
    if weights is None:
        fpr, tpr, thresholds = binary_roc(probs, target.long())
    else:
        fpr, tpr, thresholds = weighted_roc(probs, target, weights)
    # ROC thresholds descend; at index i, scores >= thresholds[i] are predicted 1.
    score = tpr - fpr  # balanced accuracy = (tpr + 1 - fpr) / 2
    best = torch.nonzero(score >= score.max() - 1e-12).flatten()
    hi = thresholds[best[0]].clamp(1e-7, 1 - 1e-7)
    # Just above the next lower score after the last best threshold, the prediction is unchanged.
    lo = thresholds[best[-1] + 1] if best[-1] + 1 < len(thresholds) else torch.tensor(1e-7)
    lo = lo.clamp(1e-7, 1 - 1e-7)
    return float(torch.sigmoid((torch.logit(hi.double()) + torch.logit(lo.double())) / 2))
