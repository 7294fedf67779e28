"""SumDataModule: the digit-sum source, its sets generated exactly in ``setup()`` from (seed, split)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from lightsum.data.batches import BOUNDARY, CALIBRATION, NATURAL, SequenceSet, joined
from lightsum.data.memory import available_memory
from lightsum.data.module import Placement, SequenceDataModule
from lightsum.data.samplers import Sampling
from lightsum.data.sequences import Layout, read_sequences
from lightsum.data.synthesis import (
    class_digits,
    class_probability,
    digits_per_sum,
    digits_with_sums,
    sum_probabilities,
    window_sums,
)
from lightsum.errors import NON_NEGATIVE_INT, POSITIVE_INT, check_arguments, is_number

TrainDistribution = Literal["natural", "balanced", "boundary"]

# Independent random streams per split: the test set never shares draws with train/val, and the
# validation set is the same whatever the training distribution, so runs compare fairly.
_STREAMS = {"train": 0, "val": 1, "test": 2, "calibration": 3, "boundary": 4, "boundary_redraw": 5, "test_boundary": 6}
# The boundary sets (val/ and test/boundary_accuracy): sums threshold-5 .. threshold+4, as many of each.
BOUNDARY_SUMS = (-5, 4)
_SYNTHESIS_CHUNK = 262_144  # rows of one class drawn at a time: bounded temporaries
_LABEL_CHUNK = 65_536  # rows summed at a time: torch widens the whole input to int32 to sum it

_RULES = {
    **dict.fromkeys(("num_samples", "seq_len", "test_samples", "batch_size", "eval_batch_size"), POSITIVE_INT),
    "val_fraction": (lambda v: is_number(v) and 0.0 < v < 1.0, "in (0, 1)"),
    "sampling_ratio": (lambda v: is_number(v) and 0.0 < v <= 1.0, "in (0, 1]"),
    "boundary_share": (lambda v: is_number(v) and 0.0 <= v <= 1.0, "in [0, 1]"),
    "boundary_window": POSITIVE_INT,
    **dict.fromkeys(("calibration_per_sum", "boundary_per_sum"), NON_NEGATIVE_INT),
}


def check_memory(needed: int) -> None:
    """Refuse, in one line, a data configuration the machine cannot hold."""
    available = available_memory()
    if available is not None and needed > available:
        raise ValueError(
            f"data: these sizes need about {needed / 1e9:.1f} GB of memory to generate and serve "
            f"(data.num_samples, data.test_samples, data.seq_len, data.sampling); this machine has "
            f"{available / 1e9:.1f} GB available: use a smaller data.num_samples"
        )


def stream(seed: int, split: str, epoch: int | None = None) -> torch.Generator:
    """A CPU generator for one split, a pure function of (seed, split) or of (seed, split, epoch)."""
    key = [seed, _STREAMS[split]] if epoch is None else [seed, _STREAMS[split], epoch]
    state = np.random.SeedSequence(key).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def natural_digits(n: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` sequences of ``seq_len`` uniform digits as uint8 (one byte per digit)."""
    return torch.randint(0, 10, (n, seq_len), generator=generator, dtype=torch.uint8)


def labels_of(digits: torch.Tensor, threshold: int) -> torch.Tensor:
    """Label 1 when the digit sum reaches ``threshold``; uint8.

    Summed in chunks: one ``sum(dtype=int32)`` over all rows would hold an int32 copy of every
    digit, 4x the data, at once.
    """
    labels = torch.empty(len(digits), dtype=torch.uint8, device=digits.device)
    for start in range(0, len(digits), _LABEL_CHUNK):
        chunk = digits[start : start + _LABEL_CHUNK]
        labels[start : start + _LABEL_CHUNK] = chunk.sum(dim=1, dtype=torch.int32) >= threshold
    return labels


class SumDataModule(SequenceDataModule):
    """Sequences of random digits labelled by whether their sum reaches a threshold: the digit-sum source.

    Its validation set joins the natural validation split, the calibration set and the boundary set
    (``lightsum.data.batches.joined``); its test batches join the natural test set and a second
    boundary set from a stream of its own, which no checkpoint was chosen on. "Rows near the
    threshold" are training rows (``train_distribution: boundary``); "the boundary set" is the
    fixed evaluation set of sums 95-104.

    Args:
        num_samples: sequences in train + validation.
        seq_len: digits per sequence.
        threshold: label is 1 when the digit sum is >= threshold.
        val_fraction: share of ``num_samples`` held out for validation (natural distribution).
        test_samples: size of the test set (natural distribution, its own random stream).
        batch_size: sequences per training batch.
        eval_batch_size: sequences per batch for validation, test and predict. Evaluation keeps
            no activations for a backward pass, so large batches cost little memory and save
            Lightning's per-batch work.
        seed: seed of all data generation and of the training sampler.
        layout: ``sequence`` (seq_len steps x 1 feature) or ``flat`` (1 step x seq_len features,
            as in the original notebook). Read by the model, which reshapes the digits.
        sampling: resampling of the training split each epoch: ``none``, ``oversample``,
            ``undersample`` or ``weighted``.
        sampling_ratio: minority/majority ratio after resampling, in (0, 1].
        train_distribution: ``natural`` (uniform digits), ``balanced`` (training split drawn
            exactly from each class's conditional distribution, at ``sampling_ratio``) or
            ``boundary`` (a ``boundary_share`` of the training split drawn with digit sums uniform
            within ``boundary_window`` of the threshold, the rest natural; ``sampling`` then
            resamples the whole split by label as usual).
        boundary_share: share of the training split drawn near the threshold with
            ``train_distribution: boundary``, in [0, 1].
        boundary_window: the sums "near the threshold": ``threshold - boundary_window`` to
            ``threshold + boundary_window - 1``, as many below as above. Used by the boundary
            training share and the calibration set.
        calibration_per_sum: the calibration set for ``model.decision_threshold: tuned``: this
            many sequences of each sum in the window, drawn exactly, each weighted by its sum's
            natural probability; the natural validation set stands for the sums outside the window.
            0: tune on the natural validation set alone (about 80 sequences of sum 100 in 40k).
        boundary_redraw: with ``train_distribution: boundary``, draw the boundary rows' digits
            afresh at the start of every epoch, keeping each row's sum (and so its label, which the
            samplers group by): every epoch sees new strings near the threshold. The draw is a
            pure function of (seed, epoch), the same on every DDP rank and on resume.
        boundary_per_sum: the fixed boundary sets behind ``val/boundary_accuracy`` and
            ``test/boundary_accuracy`` (two independent draws): this many sequences of each sum
            ``threshold - 5`` to ``threshold + 4``, drawn exactly. 0: off.
        predict_path: sequences to ``predict``: a CSV/text file (one sequence per line, digits
            comma-separated or as one string) or a ``.npy`` array (N, seq_len). Default: the
            generated test set.
        placement: where the sequences live: ``device`` moves them once to the training device
            in ``setup`` (one byte per digit), so batches are
            gathered there with no per-step copy of the data; ``host`` keeps them in CPU memory
            and Lightning copies each batch; ``auto`` is ``device`` on a CUDA accelerator.
    """

    def __init__(
        self,
        num_samples: int = 10_000,
        seq_len: int = 30,
        threshold: int = 100,
        val_fraction: float = 0.2,
        test_samples: int = 100_000,
        batch_size: int = 50,
        eval_batch_size: int = 1024,
        seed: int = 0,
        layout: Layout = "sequence",
        sampling: Sampling = "none",
        sampling_ratio: float = 1.0,
        train_distribution: TrainDistribution = "natural",
        boundary_share: float = 0.5,
        boundary_window: int = 15,
        boundary_redraw: bool = True,
        calibration_per_sum: int = 100,
        boundary_per_sum: int = 100,
        predict_path: str | None = None,
        placement: Placement = "auto",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_arguments("data", self.hparams, _RULES)
        if not 0 < threshold <= 9 * seq_len:
            raise ValueError(
                f"data.threshold={threshold} makes one class impossible: digit sums of {seq_len} digits "
                f"lie in [0, {9 * seq_len}], so the threshold must be in [1, {9 * seq_len}]"
            )
        if not 1 <= self.num_val < num_samples:
            raise ValueError(f"data.val_fraction={val_fraction} leaves an empty split of {num_samples} samples")
        check_memory(self.memory_needed())
        # The parts of the validation set (val_dataloader serves them joined, as validation_set).
        self.val_set: SequenceSet | None = None
        self.calibration_set: SequenceSet | None = None
        self.boundary_set: SequenceSet | None = None
        # The test's (test_dataloader serves it joined with test_set, which predict serves alone).
        self.test_boundary_set: SequenceSet | None = None
        # Positions and sums of the training split's rows near the threshold (train_distribution: boundary).
        self.near_rows: torch.Tensor | None = None
        self.near_sums: torch.Tensor | None = None

    def memory_needed(self) -> int:
        """Bytes of host memory ``setup`` needs, estimated before anything is allocated: the digits
        and labels of every split, as much again for generating them (measured peaks: 1.4-3.4x the
        digits, benchmarks/scale.py), and the training epoch's indices (an int64 tensor, and a
        Python list of ~40 bytes an index where Lightning's DDP sampler wrapper lists them)."""
        h = self.hparams
        rows = h.num_samples + h.test_samples + self.window_size * h.calibration_per_sum + 20 * h.boundary_per_sum
        epoch = 2 * self.num_train if h.sampling == "oversample" else self.num_train
        return 2 * rows * (h.seq_len + 1) + 48 * epoch + 64 * 2**20  # + the first tensors' fixed cost

    @property
    def num_val(self) -> int:
        return round(self.hparams.num_samples * self.hparams.val_fraction)

    @property
    def num_train(self) -> int:
        return self.hparams.num_samples - self.num_val

    @property
    def window(self) -> tuple[int, int]:
        """The sums near the threshold, inclusive (``boundary_window`` each side), clipped to the possible sums."""
        h = self.hparams
        return max(h.threshold - h.boundary_window, 0), min(h.threshold + h.boundary_window - 1, 9 * h.seq_len)

    @property
    def window_size(self) -> int:
        return self.window[1] - self.window[0] + 1

    def train_digits(self) -> torch.Tensor:
        """The training split's digits (natural, class-balanced, or natural with rows near the threshold)."""
        h = self.hparams
        g = stream(h.seed, "train")
        if h.train_distribution != "balanced":
            digits = natural_digits(self.num_train, h.seq_len, g)
            if h.train_distribution == "boundary":
                # A uniformly random placement of the rows near the threshold, each drawn exactly for
                # a sum uniform over the window (no rejection).
                rows = torch.randperm(self.num_train, generator=g)[: round(self.num_train * h.boundary_share)]
                self.near_rows = rows
                self.near_sums = window_sums(len(rows), *self.window, h.seq_len, g)
                for chunk, sums in zip(rows.split(_SYNTHESIS_CHUNK), self.near_sums.split(_SYNTHESIS_CHUNK)):
                    digits[chunk] = digits_with_sums(sums, h.seq_len, g)
            return digits

        # Minority (label 0 unless the threshold makes label 1 rarer) at sampling_ratio of majority.
        minority = 0 if class_probability(h.seq_len, h.threshold) <= 0.5 else 1
        n, n_min = self.num_train, round(self.num_train * h.sampling_ratio / (1 + h.sampling_ratio))
        # Positions of the minority first (a uniformly random placement), then each class's rows
        # drawn in chunks straight into place: peak memory is the digits plus ~9 bytes a row,
        # where drawing both classes whole, concatenating and shuffling held three copies.
        is_minority = torch.zeros(n, dtype=torch.bool)
        is_minority[torch.randperm(n, generator=g)[:n_min]] = True
        digits = torch.empty(n, h.seq_len, dtype=torch.uint8)
        for label, rows in ((minority, is_minority), (1 - minority, ~is_minority)):
            for chunk in rows.nonzero().squeeze(1).split(_SYNTHESIS_CHUNK):
                digits[chunk] = class_digits(len(chunk), label, h.seq_len, h.threshold, g)
        return digits

    def redraws(self) -> bool:
        return self.near_rows is not None and self.hparams.boundary_redraw

    def epoch_start(self) -> None:
        """New digits for the rows near the threshold, with the same sums, for the sampler's epoch (a
        pure function of (seed, epoch)): the loader calls it as each training epoch starts."""
        h = self.hparams
        g = stream(h.seed, "boundary_redraw", self.epoch_sampler.epoch)
        digits = self.train_set.x
        for chunk, sums in zip(self.near_rows.split(_SYNTHESIS_CHUNK), self.near_sums.split(_SYNTHESIS_CHUNK)):
            digits[chunk.to(digits.device)] = digits_with_sums(sums, h.seq_len, g).to(digits.device)

    def _labelled(self, digits: torch.Tensor, split: str) -> SequenceSet:
        """A split with its labels, refused when a class is missing (its recall would be undefined)."""
        h = self.hparams
        labels = labels_of(digits, h.threshold)
        n_pos = int(labels.sum())
        for cls, count in ((0, len(labels) - n_pos), (1, n_pos)):
            if count == 0:
                p0 = class_probability(h.seq_len, h.threshold)  # exact share of label 0
                share = p0 if cls == 0 else 1 - p0
                raise ValueError(
                    f"data: the {split} split ({len(labels)} sequences) holds no sequence of class {cls} "
                    f"({share:.3%} of sequences expected); use more samples (data.num_samples, "
                    f"data.val_fraction, data.test_samples) or another data.threshold"
                )
        return SequenceSet(digits, labels)

    def boundary_sums_set(self, split: str) -> SequenceSet | None:
        """The boundary set: ``boundary_per_sum`` sequences of each sum threshold-5 .. threshold+4."""
        h = self.hparams
        if not h.boundary_per_sum:
            return None
        lo, hi = (min(max(h.threshold + k, 0), 9 * h.seq_len) for k in BOUNDARY_SUMS)
        digits = digits_per_sum(lo, hi, h.boundary_per_sum, h.seq_len, stream(h.seed, split))
        return SequenceSet(digits, labels_of(digits, h.threshold))

    def make_calibration_set(self) -> SequenceSet | None:
        """The calibration set, with its tuning weights.

        Tuning maximises balanced accuracy on the natural distribution. Outside the window the
        natural validation set estimates it; inside, where errors are made, the calibration set
        does: its sequences of sum ``s`` weigh ``P(s) / calibration_per_sum``, which is what uniform
        digits would give that sum (``joined_validation_set`` weighs the natural ones).
        """
        h = self.hparams
        if not h.calibration_per_sum:
            return None
        lo, hi = self.window
        digits = digits_per_sum(lo, hi, h.calibration_per_sum, h.seq_len, stream(h.seed, "calibration"))
        p = sum_probabilities(h.seq_len)[lo : hi + 1] / h.calibration_per_sum
        return SequenceSet(
            digits,
            labels_of(digits, h.threshold),
            weights=p.to(torch.float32).repeat_interleave(h.calibration_per_sum),
        )

    def load_predict_file(self) -> None:
        """Read and check ``predict_path`` now (``setup("predict")`` does it otherwise). The CLI
        calls this before the trainer exists, so a bad file is refused before a run folder is made."""
        if self.hparams.predict_path and self.predict_set is None:
            digits = read_sequences(self.hparams.predict_path, self.hparams.seq_len)
            self.predict_set = SequenceSet(digits, labels_of(digits, self.hparams.threshold))

    def setup(self, stage: str) -> None:
        h = self.hparams
        if stage == "fit" and self.train_set is None:
            self.train_set = self._labelled(self.train_digits(), "train")
            self.sample_training(self.train_set.labels)
        if stage in ("fit", "validate") and self.val_set is None:
            self.val_set = self._labelled(natural_digits(self.num_val, h.seq_len, stream(h.seed, "val")), "validation")
            self.calibration_set = self.make_calibration_set()
            self.boundary_set = self.boundary_sums_set("boundary")
            self.validation_set = self.joined_validation_set()
        if (stage == "test" or (stage == "predict" and not h.predict_path)) and self.test_set is None:
            self.test_set = self._labelled(natural_digits(h.test_samples, h.seq_len, stream(h.seed, "test")), "test")
        if stage == "test" and self.test_boundary_set is None:
            self.test_boundary_set = self.boundary_sums_set("test_boundary")
        if stage == "predict":
            self.load_predict_file()
            if self.predict_set is None:
                self.predict_set = self.test_set
        self.place()

    def test_dataloader(self) -> DataLoader:
        if self.test_boundary_set is None:
            return super().test_dataloader()
        # Scored apart, as in validation: test/boundary_accuracy on sums no checkpoint was chosen on.
        # Where place() put the test set (the device, on a GPU); joined makes weights and parts on the host.
        device = self.test_set.device
        boundary = self.test_boundary_set.to(device)
        parts = [
            (NATURAL, self.test_set, torch.zeros(len(self.test_set))),
            (BOUNDARY, boundary, torch.zeros(len(boundary))),
        ]
        return self.eval_loader(joined(parts).to(device))

    def joined_validation_set(self) -> SequenceSet:
        """The natural validation set with the calibration and boundary sets where they exist, as one
        set (``lightsum.data.batches.joined``). A natural sequence weighs 1 / the set's size in tuning
        the threshold, or 0 inside the window when the calibration set stands in for those sums; the
        boundary set weighs 0 (it scores, it does not tune)."""
        natural = self.val_set
        weights = torch.full((len(natural),), 1 / len(natural))
        if self.calibration_set is not None:
            lo, hi = self.window
            sums = natural.x.sum(1, dtype=torch.int64)
            weights[(sums >= lo) & (sums <= hi)] = 0.0
        parts = [(NATURAL, natural, weights)]
        if self.calibration_set is not None:
            parts.append((CALIBRATION, self.calibration_set, self.calibration_set.weights))
        if self.boundary_set is not None:
            parts.append((BOUNDARY, self.boundary_set, torch.zeros(len(self.boundary_set))))
        return joined(parts)
