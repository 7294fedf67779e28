"""Data generation: determinism per seed, labels, natural rates, independent streams, loaders."""

from __future__ import annotations

import pytest
import torch

from lightsum.data import SumDataModule
from lightsum.data.batches import BOUNDARY, CALIBRATION, NATURAL, EachSequenceOnce
from lightsum.data.digit_sums import labels_of, natural_digits, stream
from lightsum.data.synthesis import class_probability, sum_probabilities


def make(stage: str = "fit", **kwargs) -> SumDataModule:
    dm = SumDataModule(**{"num_samples": 1000, "test_samples": 2000, **kwargs})
    dm.setup(stage)
    return dm


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    assert torch.equal(a.train_set.x, b.train_set.x)
    assert torch.equal(a.val_set.x, b.val_set.x)
    assert not torch.equal(a.train_set.x, c.train_set.x)


def test_generation_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    make(seed=5)
    assert torch.equal(state, torch.random.get_rng_state())


def test_shapes_dtypes_and_labels() -> None:
    dm = make(seq_len=12, threshold=50)
    digits, labels = dm.train_set.x, dm.train_set.labels
    assert digits.shape == (800, 12) and digits.dtype == torch.uint8
    assert int(digits.min()) >= 0 and int(digits.max()) <= 9
    assert torch.equal(labels.bool(), digits.long().sum(1) >= 50)
    assert len(dm.val_set) == 200


def test_test_set_is_an_independent_stream() -> None:
    dm = make("test", test_samples=800)
    fit = make("fit")
    # The test stream shares no draws with train (not a shifted copy of the same sequence).
    assert not torch.equal(dm.test_set.x[:800], fit.train_set.x)
    assert not any(torch.equal(dm.test_set.x[:10], fit.train_set.x[i : i + 10]) for i in range(790))


def test_negative_rate_over_a_million_samples_is_exact() -> None:
    digits = natural_digits(1_000_000, 30, stream(11, "train"))
    rate = 1 - labels_of(digits, 100).double().mean().item()
    exact = class_probability(30, 100)
    assert exact == pytest.approx(0.01175, abs=5e-6)
    assert abs(rate - exact) < 0.0005  # within 0.05 percentage points


def test_balanced_training_split_keeps_validation_natural() -> None:
    natural, balanced = make(), make(train_distribution="balanced")
    assert balanced.train_set.labels.double().mean().item() == pytest.approx(0.5, abs=1e-3)
    assert torch.equal(natural.val_set.x, balanced.val_set.x)


def test_boundary_training_split_draws_its_share_uniformly_over_the_window() -> None:
    dm = make(num_samples=50_000, train_distribution="boundary", boundary_share=0.4, boundary_window=10)
    natural = make(num_samples=50_000)
    sums = dm.train_set.x.long().sum(1)
    assert dm.window == (90, 109)
    inside = (sums >= 90) & (sums <= 109)
    # 40% drawn inside the window, plus the natural rows that fall there (exact natural share).
    p_window = float(sum_probabilities(30)[90:110].sum())
    assert inside.double().mean().item() == pytest.approx(0.4 + 0.6 * p_window, abs=0.01)
    counts = torch.bincount(sums[inside] - 90, minlength=20).double()
    assert counts.min() / counts.max() > 0.8  # ~uniform over the 20 sums
    assert torch.equal(dm.train_set.labels.bool(), sums >= 100)
    assert torch.equal(dm.val_set.x, natural.val_set.x)  # validation stays natural
    again = make(num_samples=50_000, train_distribution="boundary", boundary_share=0.4, boundary_window=10)
    assert torch.equal(again.train_set.x, dm.train_set.x)  # a pure function of the seed


def test_near_rows_are_redrawn_each_epoch_with_their_sums_as_a_pure_function_of_seed_and_epoch() -> None:
    def epoch_digits(dm: SumDataModule, epoch: int) -> torch.Tensor:
        dm.epoch_sampler.set_epoch(epoch)  # as Lightning does before the epoch's first batch
        next(iter(dm.train_dataloader()))
        return dm.train_set.x.clone()

    dm = make(num_samples=5000, train_distribution="boundary", sampling="oversample")
    first, labels = dm.train_set.x.clone(), dm.train_set.labels.clone()
    e0, e1 = epoch_digits(dm, 0), epoch_digits(dm, 1)
    rows = dm.near_rows
    others = torch.ones(len(first), dtype=torch.bool)
    others[rows] = False
    assert torch.equal(e1[others], first[others])  # natural rows stay
    assert (e1[rows] != e0[rows]).any(1).float().mean() > 0.99  # new strings near the threshold ...
    assert torch.equal(e1[rows].long().sum(1), dm.near_sums) and torch.equal(e0[rows].long().sum(1), dm.near_sums)
    assert torch.equal(dm.train_set.labels, labels)  # ... with the same sums, so the same labels
    other = make(num_samples=5000, train_distribution="boundary", sampling="oversample")
    assert torch.equal(epoch_digits(other, 1), e1) and torch.equal(epoch_digits(other, 0), e0)  # any order
    fixed = make(num_samples=5000, train_distribution="boundary", boundary_redraw=False)
    assert torch.equal(epoch_digits(fixed, 3), first)


def test_a_fit_trains_each_epoch_on_that_epochs_redraw() -> None:
    import pytorch_lightning as pl

    from lightsum import SumClassifier
    from lightsum.data.synthesis import digits_with_sums

    seen = {}

    class FirstBatch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                seen[trainer.current_epoch] = trainer.datamodule.train_set.x[trainer.datamodule.near_rows].clone()

    dm = SumDataModule(
        num_samples=3000,
        test_samples=500,
        batch_size=256,
        train_distribution="boundary",
        calibration_per_sum=5,
        boundary_per_sum=5,
    )
    trainer = pl.Trainer(
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[FirstBatch()],
        enable_model_summary=False,
    )

    class Model(SumClassifier):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    trainer.fit(Model(hidden_size=4), datamodule=dm)
    assert sorted(seen) == [0, 1, 2]
    for epoch, digits in seen.items():
        assert torch.equal(digits, digits_with_sums(dm.near_sums, 30, stream(0, "boundary_redraw", epoch)))


def test_calibration_set_weights_the_window_back_to_the_natural_distribution() -> None:
    dm = make(num_samples=20_000, boundary_window=15, calibration_per_sum=50)
    cal, val = dm.calibration_set, dm.val_set
    sums = cal.x.long().sum(1)
    assert torch.equal(torch.bincount(sums, minlength=271)[85:115], torch.full((30,), 50))
    assert sums.min() == 85 and sums.max() == 114 and torch.equal(cal.labels.bool(), sums >= 100)
    p = sum_probabilities(30)
    torch.testing.assert_close(cal.weights, (p[sums] / 50).float())
    # One loader serves the three parts joined, each sequence tagged with its weight and part.
    batches = list(dm.val_dataloader())
    digits, labels, weights, parts = (
        torch.cat([getattr(b, k) for b in batches]) for k in ("x", "labels", "weights", "parts")
    )
    val_weights = weights[parts == NATURAL]
    val_sums = val.x.long().sum(1)
    inside = (val_sums >= 85) & (val_sums <= 114)
    assert torch.equal(val_weights == 0, inside)  # the calibration set stands in for them
    assert torch.equal(val_weights[~inside], torch.full((int((~inside).sum()),), 1 / len(val)))
    assert float(val_weights.sum() + cal.weights.sum()) == pytest.approx(1.0, abs=0.02)
    n_boundary = len(dm.boundary_set)
    for code, part, part_weights in (
        (NATURAL, val, val_weights),
        (CALIBRATION, cal, cal.weights),
        (BOUNDARY, dm.boundary_set, torch.zeros(n_boundary)),
    ):
        mine = parts == code
        assert torch.equal(digits[mine], part.x) and torch.equal(labels[mine], part.labels)  # in order
        assert torch.equal(weights[mine], part_weights)
        # Interleaved evenly: the first tenth of the joined set holds a tenth of each part (+-1).
        assert abs(int(mine[: len(parts) // 10].sum()) - len(part) / 10) <= 1
    # Without calibration and boundary sets validation batches are of the same type: every natural
    # sequence weighs the same in tuning.
    bare = make(num_samples=20_000, calibration_per_sum=0, boundary_per_sum=0)
    batch = next(iter(bare.val_dataloader()))
    assert bool((batch.parts == NATURAL).all()) and torch.equal(batch.weights, torch.full((1024,), 1 / 4000))
    only_boundary = make(num_samples=20_000, calibration_per_sum=0)
    joined = only_boundary.validation_set
    assert torch.equal(joined.weights[joined.parts == NATURAL], torch.full((4000,), 1 / 4000))


def test_boundary_set_holds_equal_numbers_of_each_sum_threshold_minus_5_to_plus_4() -> None:
    dm = make(boundary_per_sum=30, threshold=120)
    sums = dm.boundary_set.x.long().sum(1)
    assert torch.equal(torch.bincount(sums, minlength=271)[115:125], torch.full((10,), 30)) and len(sums) == 300
    assert dm.boundary_set.labels.sum() == 150
    other = make(boundary_per_sum=30, threshold=120, seed=1)
    assert not torch.equal(other.boundary_set.x, dm.boundary_set.x)


def test_loader_serves_whole_batches() -> None:
    dm = make(batch_size=64)
    loader = dm.train_dataloader()
    digits, labels, *_ = next(iter(loader))
    assert digits.shape == (64, 30) and digits.dtype == torch.uint8 and labels.shape == (64,)
    assert sum(len(b[1]) for b in loader) == len(dm.epoch_sampler)


def test_evaluation_loaders_use_their_own_batch_size() -> None:
    dm = make(num_samples=10_000, batch_size=64, eval_batch_size=500, calibration_per_sum=0, boundary_per_sum=0)
    assert [len(b.labels) for b in dm.val_dataloader()] == [500, 500, 500, 500]  # 2,000 validation sequences
    assert len(next(iter(dm.train_dataloader()))[1]) == 64


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.5}, r"data.val_fraction must be in \(0, 1\), got 1.5"),
        ({"threshold": 271}, "threshold"),
        ({"threshold": 0}, r"data.threshold=0 makes one class impossible.*\[1, 270\]"),
        ({"test_samples": -1}, "data.test_samples must be a positive integer, got -1"),
        ({"sampling_ratio": 0}, r"data.sampling_ratio must be in \(0, 1\], got 0"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"num_samples": 1, "val_fraction": 0.2}, "empty split"),
        ({"num_samples": 0}, "data.num_samples must be a positive integer, got 0"),
        ({"sampling_ratio": 1.5}, r"data.sampling_ratio must be in \(0, 1\], got 1.5"),
        ({"boundary_share": 1.5}, r"data.boundary_share must be in \[0, 1\], got 1.5"),
        ({"boundary_window": 0}, "data.boundary_window must be a positive integer, got 0"),
        ({"calibration_per_sum": -1}, "data.calibration_per_sum must be an integer >= 0, got -1"),
    ],
)
def test_bad_arguments(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        SumDataModule(**kwargs)


def test_labels_of_sums_in_chunks_exactly() -> None:
    from lightsum.data.digit_sums import _LABEL_CHUNK

    digits = torch.randint(
        0, 10, (2 * _LABEL_CHUNK + 5, 30), generator=torch.Generator().manual_seed(3), dtype=torch.uint8
    )
    expected = (digits.long().sum(dim=1) >= 135).to(torch.uint8)  # the mean: both classes, near 50/50
    assert torch.equal(labels_of(digits, 135), expected)


@pytest.mark.parametrize(("n", "world"), [(999, 2), (1000, 2), (7, 3), (2, 3)])
def test_each_rank_evaluates_its_own_sequences_and_together_every_one_once(n: int, world: int) -> None:
    dataset = list(range(n))
    shares = [list(EachSequenceOnce(dataset, num_replicas=world, rank=r, shuffle=False)) for r in range(world)]
    assert sorted(i for share in shares for i in share) == dataset
    assert [len(EachSequenceOnce(dataset, num_replicas=world, rank=r)) for r in range(world)] == [
        len(s) for s in shares
    ]
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_predict_file_is_read_once_and_served(tmp_path) -> None:
    (tmp_path / "x.csv").write_text("0" * 30 + "\n" + "9" * 30 + "\n")
    dm = SumDataModule(predict_path=str(tmp_path / "x.csv"))
    dm.load_predict_file()
    (tmp_path / "x.csv").unlink()  # setup must not read it again
    dm.setup("predict")
    assert dm.predict_set.x.tolist() == [[0] * 30, [9] * 30] and dm.predict_set.labels.tolist() == [0, 1]
    assert dm.test_set is None  # the generated test set is not made when a file is predicted


def test_sizes_the_machine_cannot_hold_are_refused_before_anything_is_allocated() -> None:
    with pytest.raises(
        ValueError,
        match=r"^data: these sizes need about [0-9.]+ GB of memory to generate and serve .* "
        r"this machine has [0-9.]+ GB available: use a smaller data.num_samples$",
    ):
        SumDataModule(num_samples=10**12)
    assert SumDataModule(num_samples=200_000).memory_needed() < 200e6  # the default: well under a GB


def _batches(dm: SumDataModule) -> list[tuple[torch.Tensor, torch.Tensor]]:
    evaluation = [tuple(t.cpu() for t in batch) for batch in dm.val_dataloader()]
    return [(d.cpu(), y.cpu()) for d, y in dm.train_dataloader()] + evaluation


def _attached(placement: str, accelerator: str) -> SumDataModule:
    import pytorch_lightning as pl

    dm = SumDataModule(num_samples=2000, batch_size=64, sampling="oversample", placement=placement)
    dm.trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False)
    dm.setup("fit")
    return dm


def test_placement_resolves_to_the_host_on_a_cpu_trainer() -> None:
    for placement in ("auto", "host", "device"):  # on a CPU trainer the device *is* the host
        dm = _attached(placement, "cpu")
        assert dm.data_device() == torch.device("cpu")
        assert dm.train_set.x.device.type == "cpu"
    assert SumDataModule(placement="device").data_device() == torch.device("cpu")  # no trainer yet


@pytest.mark.parametrize("placement", ["host", "sideways"])
def test_placement_is_a_checked_choice(placement: str) -> None:
    from lightsum.cli import build_cli

    if placement == "host":
        assert build_cli(["--data.placement", placement], run=False).datamodule.hparams.placement == "host"
    else:
        with pytest.raises(SystemExit):
            build_cli(["--data.placement", placement], run=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_placement_serves_the_same_batches_with_no_host_sync() -> None:
    host, device = _attached("host", "gpu"), _attached("auto", "gpu")
    assert device.train_set.x.is_cuda and not host.train_set.x.is_cuda
    torch.cuda.set_sync_debug_mode("error")  # any blocking copy or host read in the loader raises
    try:
        on_device = [(d, y) for d, y in device.train_dataloader()]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(d.is_cuda and y.is_cuda for d, y in on_device)
    for ours, theirs in zip(_batches(host), _batches(device), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_test_batches_hold_the_test_set_and_a_boundary_set_of_their_own() -> None:
    dm = make("test", test_samples=800, boundary_per_sum=30)
    val = make("fit", boundary_per_sum=30)
    sums = dm.test_boundary_set.x.long().sum(1)
    assert torch.equal(torch.bincount(sums, minlength=271)[95:105], torch.full((10,), 30))
    assert not torch.equal(dm.test_boundary_set.x, val.boundary_set.x)  # not the set checkpoints were chosen on
    batches = list(dm.test_dataloader())
    parts = torch.cat([b.parts for b in batches])
    x = torch.cat([b.x for b in batches])
    assert torch.equal(x[parts == NATURAL], dm.test_set.x) and torch.equal(x[parts == BOUNDARY], dm.test_boundary_set.x)
    dm.setup("predict")  # predict serves the natural test set alone
    assert torch.equal(dm.predict_set.x, dm.test_set.x)
    assert make("test", test_samples=800, boundary_per_sum=0).test_boundary_set is None
