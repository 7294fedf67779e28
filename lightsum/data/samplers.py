"""Resampling samplers for the training split.

Each sampler's epoch is a pure function of (seed, epoch): it owns a ``torch.Generator`` reseeded
from both in ``__iter__`` and never touches the global RNG. That is what makes them correct under
DDP, where Lightning wraps a custom sampler in ``DistributedSamplerWrapper``: the wrapper lists the
inner sampler on every rank and deals out positions, so every rank must list the same indices.
The wrapper forwards ``set_epoch`` (pytorch-lightning >= 2.6.1), so epochs differ.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch
from torch.utils.data import Sampler

Sampling = Literal["none", "oversample", "undersample", "weighted"]
_CHUNK = 65_536


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends on (seed, epoch) only."""
    # Mix with a large odd constant so (seed, epoch) and (seed + 1, epoch - 1) differ.
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))


class ResampledSampler(Sampler[int]):
    """Indices of one (re)sampled training epoch, shuffled.

    Args:
        labels: 0/1 labels of the training split.
        sampling: ``none`` (each sample once), ``oversample`` (minority drawn with replacement
            up to ``ratio`` x majority), ``undersample`` (a fresh majority subset of
            minority / ``ratio`` each epoch) or ``weighted`` (``len(labels)`` draws with
            replacement, class weights set so the expected minority/majority ratio is ``ratio``).
        ratio: minority/majority count after resampling, in (0, 1] (imbalanced-learn's float
            ``sampling_strategy``).
        seed: base seed; the epoch's indices depend only on (seed, epoch).
    """

    def __init__(self, labels: torch.Tensor, sampling: Sampling = "none", ratio: float = 1.0, seed: int = 0) -> None:
        if sampling not in ("none", "oversample", "undersample", "weighted"):
            raise ValueError(f"unknown sampling strategy {sampling!r}")
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"sampling_ratio must be in (0, 1], got {ratio}")
        labels = torch.as_tensor(labels).flatten().to(torch.bool)
        self.sampling, self.ratio, self.seed, self.epoch = sampling, ratio, seed, 0
        minority = bool(labels.sum() * 2 < labels.numel())  # the label value of the rarer class
        self.minority_label = int(minority)
        self.minority = torch.nonzero(labels == minority).flatten()
        self.majority = torch.nonzero(labels != minority).flatten()
        n_min, n_maj = len(self.minority), len(self.majority)
        if sampling != "none" and n_min == 0:
            raise ValueError("cannot resample: the training split holds no sample of the minority class")
        if sampling == "oversample":
            self.n_minority, self.n_majority = max(n_min, math.ceil(ratio * n_maj)), n_maj
        elif sampling == "undersample":
            self.n_minority, self.n_majority = n_min, min(n_maj, math.ceil(n_min / ratio))
        else:  # none and weighted keep the split's size
            self.n_minority, self.n_majority = n_min, n_maj

    def positive_share(self) -> float:
        """Share of label 1 in an epoch's draws (for ``weighted``, the expected share)."""
        if self.sampling == "weighted":
            minority = self.ratio / (1 + self.ratio)
        else:
            minority = self.n_minority / max(len(self), 1)
        return minority if self.minority_label == 1 else 1 - minority

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_minority + self.n_majority

    def __iter__(self) -> Iterator[int]:
        g = epoch_generator(self.seed, self.epoch)
        n = len(self)
        if self.sampling == "none":
            indices = torch.randperm(n, generator=g)
        elif self.sampling == "weighted":
            minority, majority = len(self.minority), len(self.majority)
            # P(draw is minority) = ratio / (1 + ratio) gives the wanted expected class ratio.
            weights = torch.cat(
                [
                    torch.full((minority,), self.ratio / (1 + self.ratio) / minority, dtype=torch.float64),
                    torch.full((majority,), 1 / (1 + self.ratio) / majority, dtype=torch.float64),
                ]
            )
            pool = torch.cat([self.minority, self.majority])
            indices = pool[torch.multinomial(weights, n, replacement=True, generator=g)]
        else:
            extra = self.n_minority - len(self.minority)
            minority = torch.cat(
                [self.minority, self.minority[torch.randint(len(self.minority), (extra,), generator=g)]]
            )
            majority = self.majority[torch.randperm(len(self.majority), generator=g)[: self.n_majority]]
            pool = torch.cat([minority, majority])
            indices = pool[torch.randperm(len(pool), generator=g)]
        # Handed out a chunk at a time: one Python list of the whole epoch costs ~40 bytes an index.
        return (i for chunk in indices.split(_CHUNK) for i in chunk.tolist())
