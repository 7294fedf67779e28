"""The losses: focal against its formula, logit adjustment against BCE on shifted logits, and the prior it uses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightsum import SumClassifier, SumDataModule
from lightsum.losses import logit_adjustment, sigmoid_focal_loss


def focal_by_hand(logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float | None) -> torch.Tensor:
    """Lin et al. (2017), eq. 5, term by term in float64: -alpha_t (1 - p_t)^gamma log(p_t)."""
    total = 0.0
    for f, y in zip(logits.double().tolist(), target.double().tolist()):
        p = 1 / (1 + math.exp(-f))
        p_t = p if y == 1 else 1 - p
        alpha_t = 1.0 if alpha is None else (alpha if y == 1 else 1 - alpha)
        total += -alpha_t * (1 - p_t) ** gamma * math.log(p_t)
    return torch.tensor(total / len(logits), dtype=torch.float64)


@pytest.mark.parametrize(("gamma", "alpha"), [(2.0, None), (2.0, 0.25), (0.5, 0.9), (0.0, 0.1), (3.0, 0.0)])
def test_focal_loss_is_the_papers_formula(gamma: float, alpha: float | None) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, generator=g, dtype=torch.float64) * 4
    target = (torch.rand(64, generator=g) < 0.7).double()
    assert float(sigmoid_focal_loss(logits, target, gamma, alpha)) == pytest.approx(
        float(focal_by_hand(logits, target, gamma, alpha)), rel=1e-10
    )


def test_focal_loss_without_focusing_or_weight_is_bce_and_focusing_down_weights_easy_examples() -> None:
    logits = torch.tensor([-6.0, -1.0, 0.0, 2.0, 8.0])
    target = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0])
    assert torch.equal(
        sigmoid_focal_loss(logits, target, 0.0, None), F.binary_cross_entropy_with_logits(logits, target)
    )
    easy, hard = torch.tensor([8.0]), torch.tensor([-1.0])
    one = torch.tensor([1.0])
    # gamma 2 keeps ~(1 - p_t)^2 of the loss: nearly all of a hard example's, almost none of an easy one's.
    assert sigmoid_focal_loss(easy, one) / F.binary_cross_entropy_with_logits(easy, one) < 1e-6
    assert sigmoid_focal_loss(hard, one) / F.binary_cross_entropy_with_logits(hard, one) > 0.5


def test_logit_adjustment_offset() -> None:
    assert logit_adjustment(0.5, 1.0) == 0.0
    assert logit_adjustment(0.98825, 1.0) == pytest.approx(math.log(0.98825 / 0.01175))
    assert logit_adjustment(0.9, 0.5) == pytest.approx(0.5 * math.log(9))
    with pytest.raises(ValueError, match="both classes"):
        logit_adjustment(1.0, 1.0)


@pytest.mark.parametrize(
    ("sampling", "share"),
    [
        ("none", None),  # the split's own share of label 1
        ("oversample", 0.5),
        ("undersample", 0.5),
        ("weighted", 0.5),
    ],
)
def test_logit_adjusted_loss_is_bce_on_logits_shifted_by_the_served_prior(sampling: str, share: float | None) -> None:
    data = SumDataModule(num_samples=4000, test_samples=500, sampling=sampling)
    data.setup("fit")
    expected = float(data.train_set.labels.double().mean()) if share is None else share
    assert data.class_balance.served_positive_share == pytest.approx(expected, abs=1e-3)
    model = SumClassifier(hidden_size=8, loss="logit_adjusted", logit_tau=0.7, class_balance=data.class_balance)
    model.setup("fit")
    offset = 0.7 * math.log(data.class_balance.served_positive_share / (1 - data.class_balance.served_positive_share))
    assert float(model.logit_adjustment) == pytest.approx(offset, rel=1e-6)
    logits, target = torch.tensor([-2.0, 0.5, 3.0]), torch.tensor([0, 1, 1])
    torch.testing.assert_close(
        model.loss(logits, target), F.binary_cross_entropy_with_logits(logits + offset, target.float())
    )
    # Evaluation scores what the model predicts, f alone: the same in fit as in a later validate.
    torch.testing.assert_close(
        model.loss(logits, target, adjusted=False), F.binary_cross_entropy_with_logits(logits, target.float())
    )


def test_focal_refuses_pos_weight() -> None:
    with pytest.raises(ValueError, match="model.pos_weight does not apply to model.loss=focal"):
        SumClassifier(loss="focal", pos_weight=2.0)
