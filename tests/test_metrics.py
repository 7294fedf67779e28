"""lightsum.metrics: per-class figures, the gathered evaluation scores, threshold tuning."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import BinaryRecall, BinarySpecificity, BinaryStatScores

from lightsum.metrics import ConfusionCounts, EvaluationScores, class_metrics, confusion_metrics, tune_threshold


def test_confusion_counts_are_binary_stat_scores() -> None:
    """The training counts: torchmetrics' figures, and its state names, so checkpoints that hold
    BinaryStatScores' counts load into them."""
    g = torch.Generator().manual_seed(0)
    ours, theirs = ConfusionCounts(), BinaryStatScores()
    ours.persistent(True)
    theirs.persistent(True)
    for size in (50, 1, 256):
        preds, target = (
            torch.rand(size, generator=g) > 0.3,
            torch.randint(0, 2, (size,), generator=g, dtype=torch.uint8),
        )
        ours.update(preds, target)
        theirs.update(preds.long(), target.long())
    tp, fp, tn, fn, _ = theirs.compute()
    torch.testing.assert_close(ours.compute(), torch.stack([tn, fp, fn, tp]).view(2, 2))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    fresh = ConfusionCounts()
    fresh.persistent(True)
    fresh.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(fresh.compute(), ours.compute())


def test_tuned_threshold_maximises_balanced_accuracy() -> None:
    probs = torch.tensor([0.10, 0.20, 0.30, 0.35, 0.40, 0.90, 0.95, 0.97])
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    t = tune_threshold(probs, target)
    assert 0.35 < t <= 0.40
    values = class_metrics(probs, target, t)
    assert float(values["min_recall"]) == 1.0
    assert float(class_metrics(probs, target, 0.5)["recall_1"]) == 0.75


def test_class_metrics_per_class_recall() -> None:
    probs = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.1, 0.9])
    target = torch.tensor([1, 1, 1, 1, 0, 0])
    v = class_metrics(probs, target, 0.5)
    assert float(v["recall_1"]) == 1.0 and float(v["recall_0"]) == 0.5
    assert float(v["min_recall"]) == 0.5 and float(v["balanced_accuracy"]) == 0.75
    assert float(v["accuracy"]) == pytest.approx(5 / 6)


def test_confusion_metrics_equal_torchmetrics_recalls_bitwise() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        target = (torch.rand(997, generator=g) < 0.9).long()
        preds = torch.where(torch.rand(997, generator=g) < 0.05, 1 - target, target)
        matrix = torch.zeros(2, 2, dtype=torch.long).index_put_((target, preds), torch.tensor(1), accumulate=True)
        values = confusion_metrics(matrix)
        assert torch.equal(values["recall_0"], BinarySpecificity()(preds, target))
        assert torch.equal(values["recall_1"], BinaryRecall()(preds, target))
    # A class without sequences has recall 0, as in torchmetrics (not NaN).
    assert float(confusion_metrics(torch.tensor([[0, 0], [1, 3]]))["recall_0"]) == 0.0


def test_evaluation_scores_keep_every_score_in_float32_until_reset() -> None:
    scores = EvaluationScores()
    scores.update(torch.tensor([1.5, -2.0], dtype=torch.bfloat16), torch.tensor([1, 0]))
    scores.update(torch.tensor([0.25]), torch.tensor([1]))
    logits, target = scores.gathered()
    assert logits.dtype == torch.float32 and logits.tolist() == [1.5, -2.0, 0.25] and target.tolist() == [1, 0, 1]
    scores.reset()
    scores.update(torch.tensor([3.0]), torch.tensor([0]))
    assert scores.gathered()[0].tolist() == [3.0]  # 1-D even for one score


def test_weighted_roc_with_unit_weights_is_torchmetrics_roc() -> None:
    from torchmetrics.functional.classification import binary_roc

    from lightsum.metrics import weighted_roc

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(500, generator=g).round(decimals=2)  # ties, as real scores have
    target = (torch.rand(500, generator=g) < probs).long()
    for ours, theirs in zip(weighted_roc(probs, target, torch.ones(500)), binary_roc(probs, target), strict=True):
        torch.testing.assert_close(ours.double(), theirs.double())


def test_weighted_tuning_counts_a_weight_as_that_many_copies_and_ignores_weight_zero() -> None:
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(300, generator=g)
    target = (torch.rand(300, generator=g) < probs).long()
    copies = torch.randint(0, 4, (300,), generator=g)
    repeated = tune_threshold(probs.repeat_interleave(copies), target.repeat_interleave(copies))
    assert tune_threshold(probs, target, copies.float()) == pytest.approx(repeated, abs=1e-9)
    # Scaling all weights changes nothing; a sequence of weight 0 is not there.
    assert tune_threshold(probs, target, copies.float() * 1e-4) == pytest.approx(repeated, abs=1e-9)
