"""Per-step cost: lightsum's real training loop vs bare Lightning and a plain PyTorch loop, same work.

All three sides train the same SumNet with the same Adam on the same batches (the data module's
tensors and sampler) and run the same validation forward passes each epoch:

- lightsum: ``SumCLI`` built from a config (``configs/seed.yaml`` in a layout and batch size, or the
  packaged default), as users get it: per-step ``train/loss`` to TensorBoard, train and
  validation metrics, the tuned threshold, both checkpoints every epoch, the progress bar,
  pre-emption handling, random states in checkpoints and the TensorBoard figures;
- bare Lightning: a LightningModule whose ``training_step`` is the forward and the loss, on a
  Trainer with automatic optimization and nothing else (no logger, checkpoint, metric, progress
  bar or callback), fed the same batches as plain tensors;
- plain: the same steps in a ``for`` loop.

The last two columns time the data path alone: lightsum's training loader against plain indexing.
The sides alternate within each repeat so that drift in the machine's speed hits them alike; the
ratios are medians of each repeat's own pair, with their range.

    python benchmarks/overhead.py [--epochs 10] [--repeats 5] [--cases flat:50 ... default] [--without FEATURE ...]
    python benchmarks/overhead.py --accelerator gpu --num-samples 50000   # GPU (benchmarks/gpu_check.sh)

Ten epochs by default: the seed config draws its TensorBoard figures every 10th epoch, so ten
epochs weigh them as a full run does. The ``default`` case runs ``--default-epochs`` (2) of
the packaged default (200,000 sequences: 625 steps an epoch).

On a GPU every side keeps the data on the device (lightsum: ``data.placement auto``; the others
move it once) and the clocks stop after ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from lightsum.classifier import SumClassifier
from lightsum.cli import SumCLI, build_cli

SEED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "seed.yaml"


OPTIONS: list[str] = []  # extra CLI arguments for every run (--accelerator, --num-samples)


def build(case: str, epochs: int, root: str, *extra: str) -> SumCLI:
    """The CLI (not run) of ``case``, logging under ``root``: ``default`` is the packaged default;
    ``LAYOUT:BATCH`` the seed config in that layout at that batch size."""
    if case == "default":
        config = []
    else:
        layout, batch = case.split(":")
        config = [
            "--config",
            str(SEED_CONFIG),
            f"--data.layout={layout}",
            f"--data.batch_size={batch}",
            "--data.boundary_per_sum=0",  # seed.yaml validates on its natural split alone
        ]
    args = [
        *config,
        f"--trainer.max_epochs={epochs}",
        f"--trainer.logger.init_args.save_dir={root}",
        "--trainer.enable_model_summary=false",
        *OPTIONS,
        *extra,
    ]
    return build_cli(args, run=False)


def synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class EpochClock(pl.Callback):
    """Wall time from the start of the first training epoch to the end of training.

    Leaves out one-off set-up (data generation, sanity check), which the plain loop does not time
    either; keeps everything per epoch: validation, metrics, logging, checkpoint writes.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize()
        self.start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize()
        self.seconds = time.perf_counter() - self.start


def prepared(case: str, epochs: int) -> SumCLI:
    """The case's CLI with its data set up and placed, and its model on the training device."""
    with tempfile.TemporaryDirectory() as root:
        cli = build(case, epochs, root)
    dm = cli.datamodule
    dm.trainer = cli.trainer  # placement follows the trainer's device, as in a fit
    dm.setup("fit")
    dm.place()
    cli.model.to(cli.trainer.strategy.root_device)
    return cli


def epoch_orders(cli: SumCLI, epochs: int) -> Iterator[torch.Tensor]:
    """Each epoch's training order, as lightsum's loader draws it (redrawn rows included)."""
    dm = cli.datamodule
    for epoch in range(epochs):
        dm.epoch_sampler.set_epoch(epoch)
        if dm.redraws():
            dm.epoch_start()
        yield torch.tensor(list(dm.epoch_sampler), device=dm.train_set.x.device)


def optimizer_of(cli: SumCLI, params) -> torch.optim.Optimizer:
    """The case's optimizer, as configured (class and every argument; no schedule), over ``params``."""
    config = cli.config.optimizer
    module, name = config.class_path.rsplit(".", 1)
    optimizer = getattr(importlib.import_module(module), name)
    return optimizer(params, **config.init_args)


def lightsum_epoch_seconds(case: str, epochs: int, without: str | None = None) -> tuple[float, int]:
    """lightsum's loop; ``without`` one of its features (``FEATURES``), to measure what that one costs."""
    extra, step = FEATURES.get(without, ()), SumClassifier.training_step
    if without == "train_recalls":  # the training step as it would be without its counts
        SumClassifier.training_step = lambda self, batch, batch_idx: self.loss(
            self(batch.x, batch.lengths), batch.labels
        )
    try:
        with tempfile.TemporaryDirectory() as root:
            cli = build(case, epochs, root, *extra)
            clock = EpochClock()
            cli.trainer.callbacks.append(clock)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            return clock.seconds / epochs, len(cli.datamodule.epoch_sampler)
    finally:
        SumClassifier.training_step = step


# lightsum's loop without one feature: the arguments that turn it off (train_recalls: see above).
FEATURES = {
    "progress_bar": ("--trainer.enable_progress_bar=false",),
    "per_step_loss": ("--trainer.log_every_n_steps=50",),  # train/loss every 50th step instead of every step
    "figures": ("--figures.every_n_epochs=0",),
    "checkpoints": ("--best_checkpoint.save_top_k=0", "--last_checkpoint.save_top_k=0"),
    "train_recalls": (),
}


class BareSystem(pl.LightningModule):
    """Forward and loss in ``training_step``, forward alone in ``validation_step``: nothing else."""

    def __init__(self, cli: SumCLI) -> None:
        super().__init__()
        self.net = cli.model.net
        self.features = cli.model.features  # digits -> floats in the layout: no parameters
        self.cli = cli

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        digits, target = batch
        return F.binary_cross_entropy_with_logits(self.net(self.features(digits)), target.float())

    def validation_step(self, digits: torch.Tensor, batch_idx: int) -> None:
        self.net(self.features(digits))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return optimizer_of(self.cli, self.net.parameters())


class EpochBatches:
    """The training batches as plain tensors, epoch after epoch, for the bare Trainer."""

    def __init__(self, cli: SumCLI, epochs: int) -> None:
        self.cli, self.orders = cli, epoch_orders(cli, epochs)
        self.batches = -(-len(cli.datamodule.epoch_sampler) // cli.datamodule.hparams.batch_size)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        train = self.cli.datamodule.train_set
        for batch in next(self.orders).split(self.cli.datamodule.hparams.batch_size):
            yield train.x[batch], train.labels[batch]


class Listed:
    """Batches Lightning iterates as one loader (a plain list would be read as a list of loaders)."""

    def __init__(self, batches: tuple[torch.Tensor, ...]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.batches)


def bare_epoch_seconds(case: str, epochs: int) -> tuple[float, int]:
    cli = prepared(case, epochs)
    dm = cli.datamodule
    val = dm.validation_set.x.split(dm.hparams.eval_batch_size)  # lightsum's validation batches
    clock = EpochClock()
    trainer = pl.Trainer(
        accelerator=cli.trainer.accelerator,
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    trainer.fit(BareSystem(cli), train_dataloaders=EpochBatches(cli, epochs), val_dataloaders=Listed(val))
    return clock.seconds / epochs, len(dm.epoch_sampler)


def plain_epoch_seconds(case: str, epochs: int) -> tuple[float, int]:
    cli = prepared(case, epochs)
    dm, model = cli.datamodule, cli.model
    net = model.net
    optimizer = optimizer_of(cli, net.parameters())
    train, val = dm.train_set, dm.validation_set
    synchronize()
    start = time.perf_counter()
    for order in epoch_orders(cli, epochs):
        net.train()
        for batch in order.split(dm.hparams.batch_size):
            digits, target = train.x[batch], train.labels[batch]
            loss = F.binary_cross_entropy_with_logits(net(model.features(digits)), target.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            for digits in val.x.split(dm.hparams.eval_batch_size):  # lightsum's validation batches
                net(model.features(digits))
    synchronize()
    return (time.perf_counter() - start) / epochs, len(dm.epoch_sampler)


def data_path_us(case: str, epochs: int) -> tuple[float, float, int]:
    """Microseconds per training batch of the data path alone, lightsum's loader vs plain indexing,
    and the batches of an epoch."""
    cli = prepared(case, epochs)
    dm = cli.datamodule
    train, batch_size = dm.train_set, dm.hparams.batch_size
    timings = {}
    for side in ("lightsum", "plain"):
        batches = 0
        synchronize()
        start = time.perf_counter()
        if side == "lightsum":
            for epoch in range(epochs):
                dm.epoch_sampler.set_epoch(epoch)
                for _ in dm.train_dataloader():
                    batches += 1
        else:
            for order in epoch_orders(cli, epochs):  # with the same redraws
                for batch in order.split(batch_size):
                    train.x[batch], train.labels[batch]
                    batches += 1
        synchronize()
        timings[side] = (time.perf_counter() - start) / batches * 1e6
    return timings["lightsum"], timings["plain"], batches // epochs


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs", type=int, default=10, help="epochs per timing (a multiple of figures.every_n_epochs)"
    )
    parser.add_argument("--default-epochs", type=int, default=2, help="epochs per timing of the default case")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["flat:50", "sequence:50", "flat:1024", "sequence:1024", "default"],
        help="LAYOUT:BATCH of configs/seed.yaml, or default (the packaged default)",
    )
    parser.add_argument(
        "--without",
        nargs="*",
        choices=sorted(FEATURES),
        default=[],
        help="also time lightsum without each of these features (one at a time, alternating with the "
        "others), to price each",
    )
    parser.add_argument("--accelerator", default="cpu", help="trainer.accelerator for every side (cpu, gpu)")
    parser.add_argument("--num-samples", type=int, help="data.num_samples (seed config: 10000)")
    opts = parser.parse_args()
    OPTIONS.append(f"--trainer.accelerator={opts.accelerator}")
    if opts.num_samples:
        OPTIONS.append(f"--data.num_samples={opts.num_samples}")
    device = (
        torch.cuda.get_device_name() if opts.accelerator == "gpu" else f"CPU, torch threads {torch.get_num_threads()}"
    )
    print(
        f"{' '.join(OPTIONS)}; seed config cases {opts.epochs} epochs per timing, default {opts.default_epochs}; "
        f"{opts.repeats} alternating repeats; {device}"
    )
    table = [
        f"{'case':13s} {'plain/s':>8s} {'bare/s':>8s} {'lightsum/s':>10s} {'lightsum / bare':>19s} "
        f"{'lightsum / plain':>19s} {'lightsum s/epoch':>16s} {'data us/batch lightsum':>22s} {'plain':>6s}"
    ]
    sides = {"plain": plain_epoch_seconds, "bare": bare_epoch_seconds, "lightsum": lightsum_epoch_seconds}
    for feature in opts.without:
        sides[f"without {feature}"] = partial(lightsum_epoch_seconds, without=feature)
    costs = [f"{'case':13s} {'lightsum without':>20s} {'s/epoch':>8s} {'saves ms/epoch':>15s} {'us/step':>8s} (range)"]
    for case in opts.cases:
        epochs = opts.default_epochs if case == "default" else opts.epochs
        rates: dict[str, list[float]] = {side: [] for side in sides}
        names = list(sides)
        for repeat in range(opts.repeats):  # the sides in turn, so drift in machine speed hits all alike,
            for side in names[repeat % len(names) :] + names[: repeat % len(names)]:  # each first in turn
                seconds, n = sides[side](case, epochs)
                rates[side].append(n / seconds)
        # Each repeat's own ratio: the machine's speed drifts between repeats, and a repeat shares it.
        to_bare = [light / bare for light, bare in zip(rates["lightsum"], rates["bare"])]
        to_plain = [light / plain for light, plain in zip(rates["lightsum"], rates["plain"])]
        data_light, data_plain, steps = data_path_us(case, epochs)
        p, b, q = (statistics.median(rates[side]) for side in ("plain", "bare", "lightsum"))
        table.append(
            f"{case:13s} {p:8.0f} {b:8.0f} {q:10.0f} {spread(to_bare):>19s} {spread(to_plain):>19s} "
            f"{n / q:16.3f} {data_light:22.1f} {data_plain:6.1f}"
        )
        for feature in opts.without:  # each repeat's own difference to the whole loop
            saved = [n / full - n / part for full, part in zip(rates["lightsum"], rates[f"without {feature}"])]
            costs.append(
                f"{case:13s} {feature:>20s} {n / statistics.median(rates[f'without {feature}']):8.3f} "
                f"{statistics.median(saved) * 1e3:15.1f} {statistics.median(saved) / steps * 1e6:8.1f} "
                f"({min(saved) * 1e3:.0f} to {max(saved) * 1e3:.0f} ms)"
            )
        print("\n".join(table), flush=True)  # so far; the progress bars of lightsum's runs print between
    print("\nsamples per second (median of the repeats); ratios: median of each repeat's own (range)")
    print("\n".join(table))
    if opts.without:
        print("\nwhat each feature costs: lightsum's s/epoch without it, and the median of each repeat's saving")
        print("\n".join(costs))


if __name__ == "__main__":
    main()
