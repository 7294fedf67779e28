"""What both data sources serve: sets of padded sequences held in memory, their one batch type, and
the loaders around them (the resumable training loader, evaluation and predict samplers)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, SequentialSampler

# The parts of a validation set, tagged per sequence in its batches: natural data (every val/
# metric), the threshold's calibration set (digit sums only), the fixed boundary set of digit sums
# 95-104 (val/boundary_accuracy).
NATURAL, CALIBRATION, BOUNDARY = 0, 1, 2


class Batch(NamedTuple):
    """Every batch lightsum serves, from either source.

    Attributes:
        x: the steps: uint8 digits (B, T), float32 numbers (B, T, F) or int64 token codes (B, T)
            (0 padding, 1 a token the training split never held).
        labels: 0/1 labels (B,) uint8; None for a predict file without labels.
        lengths: valid steps of each sequence (B,) int64, the rest padding; None when every
            sequence is T steps long (digit sums, fixed-length files), which skips packing.
        weights: validation batches only: each sequence's weight in tuning the decision threshold.
        parts: validation batches only: each sequence's part (``NATURAL``, ``CALIBRATION``, ``BOUNDARY``).
    """

    x: torch.Tensor
    labels: torch.Tensor | None
    lengths: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    parts: torch.Tensor | None = None


class SequenceSet(Dataset):
    """Sequences held in memory (or memory-mapped), indexed by whole batches.

    ``__getitems__`` lets the DataLoader gather a batch with one tensor index instead of
    ``batch_size`` calls to ``__getitem__`` plus collate. With ``lengths``, a batch is cut to its own
    longest sequence.

    Args:
        x: the steps of every row the set may use (see ``Batch.x``; token codes may be a file's own,
            mapped through ``codes``).
        labels: 0/1 per sequence of the set, or None.
        lengths: valid steps per row of ``x``, or None when all are full.
        rows: the rows of ``x`` (and ``lengths``) that make this set, in order; None: all of them.
            Splits of one file share its arrays this way instead of copying them.
        codes: token sets only: the model's code of each file code + 1 (file code -1 is padding).
        weights, parts: a validation set's tuning weights and part codes.
    """

    def __init__(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        lengths: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        codes: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        parts: torch.Tensor | None = None,
    ) -> None:
        self.x, self.labels, self.lengths, self.rows = x, labels, lengths, rows
        self.codes, self.weights, self.parts = codes, weights, parts

    def to(self, device: torch.device, moved: dict[int, torch.Tensor] | None = None) -> SequenceSet:
        """Moves the steps, labels, weights and parts once; batches are then gathered where the data
        lives. Lengths and rows stay on the host: cutting a batch to its longest needs them there.
        ``moved`` (id of a tensor -> its copy on ``device``) lets sets that share a file's arrays
        share one copy there too."""
        moved = {} if moved is None else moved
        for name in ("x", "labels", "codes", "weights", "parts"):
            value = getattr(self, name)
            if value is not None:
                if id(value) not in moved:
                    moved[id(value)] = value.to(device)
                setattr(self, name, moved[id(value)])
        return self

    @property
    def device(self) -> torch.device:
        return self.x.device

    def __len__(self) -> int:
        return len(self.x) if self.rows is None else len(self.rows)

    def __getitem__(self, index: int) -> Batch:
        """Sequence ``index`` as a batch of one (loaders use ``__getitems__``; one type either way)."""
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int] | range) -> Batch:
        index = (
            torch.as_tensor(indices) if not isinstance(indices, range) else torch.arange(indices.start, indices.stop)
        )
        row = index if self.rows is None else self.rows[index]
        lengths = None if self.lengths is None else self.lengths[row]
        if self.x.is_cuda:
            # Only the indices cross, from pinned memory and without blocking: the host queues the
            # gather and moves on, so a step never waits on a host-to-device copy.
            index = index.pin_memory().to(self.x.device, non_blocking=True)
            row = row.pin_memory().to(self.x.device, non_blocking=True) if self.rows is not None else index
        x = self.x[row] if lengths is None else self.x[row, : int(lengths.max())]
        if self.codes is not None:
            x = self.codes[x.long() + 1]
        return Batch(
            x,
            None if self.labels is None else self.labels[index],
            lengths,
            None if self.weights is None else self.weights[index],
            None if self.parts is None else self.parts[index],
        )


def batch_as_is(batch: Batch) -> Batch:
    """The DataLoader's collate function: ``SequenceSet`` already returns whole batches."""
    return batch


class ResumableLoader(DataLoader):
    """The training loader: a DataLoader that continues an epoch where a checkpoint left it.

    Its state, saved by Lightning in every checkpoint, is the number of batches of the running
    epoch already trained (``trained_batches()``, 0 at an epoch's end). After ``load_state_dict``
    the next iteration drops that many batches before yielding: the epoch's order is a pure function
    of (seed, epoch), so the batches that follow are exactly those the interrupted run would have
    trained next, on every rank. The drop happens at the first ``next()``, after Lightning has set
    the sampler's epoch. Batches are in-memory gathers, so dropping them costs next to nothing.

    Args:
        trained_batches: returns the batches of the running epoch trained so far.
        before_epoch: called at the first ``next()`` of each epoch, before any batch (and before
            the skip): the digit sums redraw their rows near the threshold for the epoch there.
    """

    def __init__(
        self,
        *args,
        trained_batches: Callable[[], int] | None = None,
        before_epoch: Callable[[], None] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.trained_batches = trained_batches
        self.before_epoch = before_epoch
        self._skip = 0

    def state_dict(self) -> dict[str, int]:
        return {"trained_batches": self.trained_batches() if self.trained_batches else 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._skip = state["trained_batches"]

    def __iter__(self) -> Iterator:
        skip, self._skip = self._skip, 0
        batches = super().__iter__()
        return batches if not (skip or self.before_epoch) else _epoch(batches, skip, self.before_epoch)


def _epoch(batches: Iterator, skip: int, before: Callable[[], None] | None) -> Iterator:
    """``batches`` after ``before()`` and without its first ``skip`` items, both at the first ``next()``."""
    if before is not None:
        before()
    for _ in range(skip):
        next(batches)
    yield from batches


class ContiguousBatches(BatchSampler):
    """The predict loader's batches: consecutive positions, each batch a ``range``, not a list.

    Lightning keeps the positions of every batch it predicts until the run ends (for prediction
    writers, which may ask for them); as lists of ints they hold about 40 bytes an input row, as
    ranges a few dozen bytes a batch. A sampler other than a sequential one (one Lightning puts in
    under DDP) gets the usual lists.
    """

    def __iter__(self) -> Iterator[range | list[int]]:
        if not isinstance(self.sampler, SequentialSampler):
            yield from super().__iter__()
            return
        size = len(self.sampler)
        for start in range(0, size, self.batch_size):
            stop = min(start + self.batch_size, size)
            if stop - start == self.batch_size or not self.drop_last:
                yield range(start, stop)


class EachSequenceOnce(DistributedSampler):
    """This rank's share of an evaluation set: every ``num_replicas``-th sequence, none repeated.

    Torch's ``DistributedSampler`` pads the last rank with repeated sequences, which the gathered
    metrics would count twice; ranks here differ by at most one sequence (safe without
    gradients). A ``DistributedSampler``, so Lightning does not wrap it again.
    """

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return math.ceil((len(self.dataset) - self.rank) / self.num_replicas)


def joined(parts: list[tuple[int, SequenceSet, torch.Tensor]]) -> SequenceSet:
    """Several validation parts as one set whose batches tag each sequence with its part and tuning
    weight: one set, so one loader (each sequence evaluated once across DDP ranks like any other,
    one validation loop in Lightning's output, not one per part).

    The parts are interleaved evenly (each keeps its order), so a partial validation
    (``limit_val_batches``) scores the same share of every part. Parts are in-memory sets of
    full-length sequences (``rows``, ``lengths`` and ``codes`` None).

    Args:
        parts: (part code, set, tuning weight per sequence) for each part.
    """
    sets = [s for _, s, _ in parts]
    # Sequence k of a part of n sits at (k + 0.5) / n of the way through the joined set.
    order = torch.cat([(torch.arange(len(s), dtype=torch.float64) + 0.5) / len(s) for s in sets]).argsort(stable=True)
    return SequenceSet(
        torch.cat([s.x for s in sets])[order],
        torch.cat([s.labels for s in sets])[order],
        weights=torch.cat([w for _, _, w in parts]).to(torch.float32)[order],
        parts=torch.cat([torch.full((len(s),), code, dtype=torch.uint8) for code, s, _ in parts])[order],
    )
