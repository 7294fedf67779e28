"""Resampling samplers: class ratios, purity in (seed, epoch), and correctness under 2-process DDP."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from lightsum import SumClassifier, SumDataModule
from lightsum.data.batches import SequenceSet
from lightsum.data.samplers import ResampledSampler

LABELS = torch.tensor([0] * 20 + [1] * 980)  # 2% minority, label 0 as in the digit-sum data


def epoch(sampler: ResampledSampler, e: int) -> list[int]:
    sampler.set_epoch(e)
    return list(sampler)


def test_none_is_a_permutation() -> None:
    s = ResampledSampler(LABELS, "none", seed=1)
    assert sorted(epoch(s, 0)) == list(range(1000)) and len(s) == 1000


def test_oversample_reaches_ratio_and_keeps_every_sample() -> None:
    s = ResampledSampler(LABELS, "oversample", ratio=0.5, seed=1)
    idx = torch.tensor(epoch(s, 0))
    counts = Counter(LABELS[idx].tolist())
    assert counts == {1: 980, 0: 490} and len(s) == 1470
    assert set(range(20)) <= set(idx.tolist())  # every original minority sample appears


def test_undersample_fresh_majority_subset_each_epoch() -> None:
    s = ResampledSampler(LABELS, "undersample", ratio=1.0, seed=1)
    e0, e1 = torch.tensor(epoch(s, 0)), torch.tensor(epoch(s, 1))
    assert Counter(LABELS[e0].tolist()) == {0: 20, 1: 20}
    assert len(set(e0.tolist())) == 40  # without replacement
    assert set(e0[LABELS[e0] == 1].tolist()) != set(e1[LABELS[e1] == 1].tolist())


def test_weighted_expected_ratio() -> None:
    s = ResampledSampler(LABELS, "weighted", ratio=1.0, seed=1)
    draws = torch.cat([torch.tensor(epoch(s, e)) for e in range(20)])
    assert len(s) == 1000
    assert LABELS[draws].float().mean().item() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("sampling", ["none", "oversample", "undersample", "weighted"])
def test_pure_function_of_seed_and_epoch(sampling: str) -> None:
    a, b = ResampledSampler(LABELS, sampling, seed=7), ResampledSampler(LABELS, sampling, seed=7)
    state = torch.random.get_rng_state()
    torch.rand(5)  # global RNG use in between must not matter
    assert epoch(a, 3) == epoch(b, 3)
    assert epoch(a, 3) != epoch(a, 4)
    assert epoch(a, 3) != epoch(ResampledSampler(LABELS, sampling, seed=8), 3)
    epoch(a, 0)
    torch.random.set_rng_state(state)
    state_after = torch.random.get_rng_state()
    epoch(a, 1)
    assert torch.equal(state_after, torch.random.get_rng_state())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sampling_ratio"):
        ResampledSampler(LABELS, "oversample", ratio=1.5)
    with pytest.raises(ValueError, match="minority"):
        ResampledSampler(torch.ones(10), "oversample")


# --- DDP ------------------------------------------------------------------------------------------
class RecordingBatches(SequenceSet):
    """Remembers every index the loader fetched on this rank."""

    seen: list[int]

    def __getitems__(self, indices: list[int]):
        self.seen.extend(indices)
        return super().__getitems__(indices)


class RecordingData(SumDataModule):
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and not isinstance(self.train_set, RecordingBatches):
            self.train_set = RecordingBatches(self.train_set.x, self.train_set.labels)
            self.train_set.seen = []


class GatherIndices(pl.Callback):
    """After each epoch, gather every rank's fetched indices; rank 0 writes them to a file."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = trainer.datamodule.train_set
        mine = torch.tensor(dataset.seen)
        dataset.seen = []
        everyone = trainer.strategy.all_gather(mine)  # (world, n): padding makes lengths equal
        if trainer.global_rank == 0:
            with open(self.out, "a") as f:
                f.write(json.dumps(everyone.tolist()) + "\n")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Both ranks close the gloo group together. Left to interpreter exit, a rank that finishes
        # first could tear its side down under the other's feet; that aborted a worker about once in
        # six runs ("terminate called without an active exception").
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


class AdamClassifier(SumClassifier):
    """Outside the CLI nothing injects the optimizer."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["oversample", "undersample", "weighted"])
def test_ddp_ranks_together_serve_one_resampled_epoch(sampling: str, tmp_path: Path) -> None:
    out = tmp_path / "indices.jsonl"
    data = RecordingData(num_samples=1250, test_samples=100, batch_size=16, sampling=sampling, seed=5)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[GatherIndices(out)],
    )
    trainer.fit(AdamClassifier(hidden_size=4), datamodule=data)
    epochs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(epochs) == 2
    data.setup("fit")  # the same split and sampler, rebuilt in this process
    served = []
    for e, per_rank in enumerate(epochs):
        assert len(per_rank) == 2
        gathered = Counter(per_rank[0] + per_rank[1])
        expected = Counter(epoch(data.epoch_sampler, e))
        # Exactly one resampled epoch, plus at most world_size - 1 entries of wrapper padding.
        assert not expected - gathered
        assert sum((gathered - expected).values()) <= 1
        assert set(per_rank[0]) & set(per_rank[1]) <= {i for i, c in expected.items() if c > 1} | set(
            gathered - expected
        )
        served.append(expected)
    assert served[0] != served[1]
