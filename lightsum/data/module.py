"""SequenceDataModule: what both data sources share once their sets exist: the resampled and resumable
training loader, evaluation loaders, placement on the device, and the training classes the model reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler, SequentialSampler

from lightsum.data.batches import ContiguousBatches, EachSequenceOnce, ResumableLoader, SequenceSet, batch_as_is
from lightsum.data.samplers import ResampledSampler

Placement = Literal["auto", "host", "device"]


@dataclass
class ClassBalance:
    """The training split's classes as the loss sees them; filled by the data module's ``setup("fit")``
    and read by the model's (the CLI hands the model this object): ``model.pos_weight: balanced`` and
    ``model.loss: logit_adjusted`` need them.

    Attributes:
        counts: sequences of class 0 and of class 1 in the training split.
        served_positive_share: share of class 1 in the training batches as served (after
            resampling; for ``weighted``, the expected share).
    """

    counts: tuple[int, int] | None = None
    served_positive_share: float | None = None


class SequenceDataModule(pl.LightningDataModule):
    """The data: digit sums, or your files with configs/files.yaml (--data.help SumDataModule | SequenceFiles).

    The base of both sources: a source's ``setup`` fills ``train_set`` (and calls
    ``sample_training``), ``validation_set`` (whose batches carry tuning weights and parts),
    ``test_set`` and ``predict_set``; this class serves them.

    Hyperparameters it reads (every source has them): ``batch_size``, ``eval_batch_size``, ``seed``,
    ``sampling``, ``sampling_ratio``, ``placement``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.train_set: SequenceSet | None = None
        self.validation_set: SequenceSet | None = None
        self.test_set: SequenceSet | None = None
        self.predict_set: SequenceSet | None = None
        self.epoch_sampler: ResampledSampler | None = None
        self.class_balance = ClassBalance()

    def schema(self) -> dict[str, Any] | None:
        """What the model must know of the data to read it (linked into ``model.schema`` by the CLI):
        None for digit sums, whose model reads digits by ``seq_len`` and ``layout``."""
        return None

    def sample_training(self, labels: torch.Tensor) -> None:
        """The training epochs' sampler over ``labels``, and the class balance the model reads."""
        h = self.hparams
        self.epoch_sampler = ResampledSampler(labels, h.sampling, h.sampling_ratio, h.seed)
        positives = int(labels.sum())
        self.class_balance.counts = (len(labels) - positives, positives)
        self.class_balance.served_positive_share = self.epoch_sampler.positive_share()

    def data_device(self) -> torch.device:
        """The device the sequences are kept on (see ``placement``)."""
        if self.hparams.placement == "host" or self.trainer is None:
            return torch.device("cpu")
        device = self.trainer.strategy.root_device
        return device if self.hparams.placement == "device" or device.type == "cuda" else torch.device("cpu")

    def place(self) -> None:
        """Every set where ``placement`` says, once."""
        device, moved = self.data_device(), {}
        for split in (self.train_set, self.validation_set, self.test_set, self.predict_set):
            if split is not None and split.device != device:
                split.to(device, moved)

    def epoch_start(self) -> None:
        """Called as each training epoch starts, before its first batch (the sampler's epoch is set)."""

    def redraws(self) -> bool:
        """Whether ``epoch_start`` changes the training set (only then does the loader call it)."""
        return False

    def loader(
        self,
        dataset: SequenceSet,
        batch_size: int,
        sampler: Sampler | None = None,
        loader: type[DataLoader] = DataLoader,
        **kwargs: Any,
    ) -> DataLoader:
        # num_workers=0: for in-memory tensors worker processes only add IPC cost. A generator of
        # its own: a DataLoader otherwise draws a seed from the global RNG each time an epoch starts,
        # shifting the dropout masks of everything after it (and a resumed run would draw it at
        # another moment than the run it continues).
        return loader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=batch_as_is,
            generator=torch.Generator().manual_seed(self.hparams.seed),
            **kwargs,
        )

    def eval_loader(self, dataset: SequenceSet) -> DataLoader:
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return self.loader(dataset, self.hparams.eval_batch_size)
        sampler = EachSequenceOnce(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
        return self.loader(dataset, self.hparams.eval_batch_size, sampler)

    def trained_batches(self) -> int:
        """Batches of the running training epoch already trained; 0 once the epoch is complete."""
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return done if done < self.trainer.num_training_batches else 0

    def train_dataloader(self) -> DataLoader:
        return self.loader(
            self.train_set,
            self.hparams.batch_size,
            self.epoch_sampler,
            ResumableLoader,
            trained_batches=self.trained_batches,
            before_epoch=self.epoch_start if self.redraws() else None,
        )

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.validation_set)

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        # In order and as ranges (ContiguousBatches): no memory per row beyond the sequences' own.
        batches = ContiguousBatches(SequentialSampler(self.predict_set), self.hparams.eval_batch_size, drop_last=False)
        return DataLoader(self.predict_set, batch_sampler=batches, collate_fn=batch_as_is)
