"""Per-class classification metrics and decision-threshold tuning (torchmetrics functional API)."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
    binary_recall,
    binary_roc,
    binary_specificity,
)


def class_metrics(probs: torch.Tensor, target: torch.Tensor, threshold: float | torch.Tensor) -> dict[str, torch.Tensor]:
    """All headline metrics of one evaluation.

    Args:
        probs: probabilities of class 1.
        target: 0/1 labels.
        threshold: predict 1 when ``probs >= threshold``.

    Returns:
        recall_0 (minority class here), recall_1, min_recall (the headline: the worse of the two),
        balanced_accuracy, accuracy, auroc, average_precision.
    """
    target = target.long()
    preds = (probs >= threshold).long()  # labels, so torchmetrics applies no threshold of its own
    values = {
        "recall_0": binary_specificity(preds, target),  # recall of the negative class
        "recall_1": binary_recall(preds, target),
        "accuracy": binary_accuracy(preds, target),
        "auroc": binary_auroc(probs, target),
        "average_precision": binary_average_precision(probs, target),
    }
    values["min_recall"] = torch.minimum(values["recall_0"], values["recall_1"])
    values["balanced_accuracy"] = (values["recall_0"] + values["recall_1"]) / 2
    return values


def tune_threshold(probs: torch.Tensor, target: torch.Tensor) -> float:
    """The decision threshold that maximises balanced accuracy on (probs, target).

    A well-trained model separates a validation set over a whole range of thresholds; taking the
    middle of that best range (in logit space) rather than its edge keeps the threshold away from
    the few validation scores that happen to bound it.
    """
    fpr, tpr, thresholds = binary_roc(probs, target.long())
    # ROC thresholds descend; at index i, scores >= thresholds[i] are predicted 1.
    score = tpr - fpr  # balanced accuracy = (tpr + 1 - fpr) / 2
    best = torch.nonzero(score >= score.max() - 1e-12).flatten()
    hi = thresholds[best[0]].clamp(1e-7, 1 - 1e-7)
    # Just above the next lower score after the last best threshold, the prediction is unchanged.
    lo = thresholds[best[-1] + 1] if best[-1] + 1 < len(thresholds) else torch.tensor(1e-7)
    lo = lo.clamp(1e-7, 1 - 1e-7)
    return float(torch.sigmoid((torch.logit(hi.double()) + torch.logit(lo.double())) / 2))
