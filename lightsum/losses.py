"""The training losses: binary cross-entropy, sigmoid focal loss, and the logit adjustment's offset.

With one logit ``f`` and ``p = sigmoid(f)``:

- focal (Lin et al. 2017, as ``torchvision.ops.sigmoid_focal_loss``): ``alpha_t (1 - p_t)**gamma
  * BCE(f, y)``, ``p_t`` the probability given to the true class; ``alpha`` weighs class 1 and
  ``1 - alpha`` class 0 (none: no class weight). ``gamma = 0`` without alpha is BCE.
- logit adjustment (Menon et al. 2021): ``BCE(f + tau * log(pi_1 / pi_0), y)`` with ``pi`` the
  class prior of the training batches; the model then predicts with ``f`` alone, which estimates
  the logit of a class-balanced world. ``tau = 1`` is the balanced-softmax case.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None
) -> torch.Tensor:
    """Mean sigmoid focal loss of ``logits`` against 0/1 ``target`` (of the logits' dtype)."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if gamma:
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        ce = ce * (1 - p_t) ** gamma
    if alpha is not None:
        ce = ce * (alpha * target + (1 - alpha) * (1 - target))
    return ce.mean()


def logit_adjustment(positive_share: float, tau: float) -> float:
    """``tau * log(pi_1 / pi_0)``: what logit adjustment adds to the logit in the training loss."""
    if not 0.0 < positive_share < 1.0:
        raise ValueError(
            f"logit adjustment needs both classes in the training batches, got a share of label 1 of {positive_share}"
        )
    return tau * math.log(positive_share / (1 - positive_share))
