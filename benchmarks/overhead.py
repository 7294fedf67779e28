"""Lightning overhead: lightsum's real training loop vs a plain PyTorch loop, same work.

Both sides train the same SumNet with the same Adam on the same batches (the data module's
tensors and sampler) and run the same validation forward passes each epoch. The lightsum side is
``SumCLI`` built from ``configs/seed.yaml`` (so per-step ``train/loss`` to TensorBoard, both
checkpoints every epoch, the progress bar, per-class metrics and the TensorBoard figures, as users
get them); the plain loop has none of that. The
last two columns time the data path alone: lightsum's training loader against plain indexing.
The sides alternate, several repeats, and medians are reported.

    python benchmarks/overhead.py [--epochs 5] [--repeats 5] [--cases flat:50 ...]
    python benchmarks/overhead.py --accelerator gpu --num-samples 50000   # GPU (benchmarks/gpu_check.sh)

Five epochs by default: the seed config draws its TensorBoard figures every 5th epoch, so five
epochs weigh them about as a full run does (three would draw them in one epoch of three).

On a GPU both sides keep the data on the device (lightsum: ``data.placement auto``; the plain loop
moves it once) and the clocks stop after ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from lightsum.cli import SumCLI, build_cli

SEED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "seed.yaml"


OPTIONS: list[str] = []  # extra CLI arguments for every run (--accelerator, --num-samples)


def build(layout: str, batch_size: int, epochs: int, root: str, *extra: str) -> SumCLI:
    """The seed config's CLI (not run) in ``layout`` at ``batch_size``, logging under ``root``."""
    args = [
        "--config",
        str(SEED_CONFIG),
        f"--data.layout={layout}",
        f"--data.batch_size={batch_size}",
        f"--trainer.max_epochs={epochs}",
        f"--trainer.logger.init_args.save_dir={root}",
        "--trainer.enable_model_summary=false",
        "--data.boundary_per_sum=0",  # the plain loop validates on the natural set alone, as seed.yaml did before it
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
    either; keeps everything per epoch: validation, metrics, logging, both checkpoint writes.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize()
        self.start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize()
        self.seconds = time.perf_counter() - self.start


def lightning_epoch_seconds(layout: str, batch_size: int, epochs: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as root:
        cli = build(layout, batch_size, epochs, root)
        clock = EpochClock()
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return clock.seconds / epochs, len(cli.datamodule.epoch_sampler)


def plain_epoch_seconds(layout: str, batch_size: int, epochs: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as root:
        cli = build(layout, batch_size, epochs, root)
    dm, model = cli.datamodule, cli.model
    dm.setup("fit")
    device = cli.trainer.strategy.root_device
    model.to(device)
    net = model.net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    train, val = dm.train_set.to(device), dm.val_set.to(device)
    synchronize()
    start = time.perf_counter()
    for epoch in range(epochs):
        dm.epoch_sampler.set_epoch(epoch)
        order = torch.tensor(list(dm.epoch_sampler), device=device)
        net.train()
        for batch in order.split(batch_size):
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


def data_path_us(layout: str, batch_size: int, epochs: int) -> tuple[float, float]:
    """Microseconds per training batch of the data path alone: lightsum's loader vs plain indexing."""
    with tempfile.TemporaryDirectory() as root:
        cli = build(layout, batch_size, epochs, root)
    dm = cli.datamodule
    dm.trainer = cli.trainer  # placement follows the trainer's device, as in a fit
    dm.setup("fit")
    train = dm.train_set
    timings = {}
    for side in ("lightsum", "plain"):
        batches = 0
        synchronize()
        start = time.perf_counter()
        for epoch in range(epochs):
            dm.epoch_sampler.set_epoch(epoch)
            if side == "lightsum":
                for _ in dm.train_dataloader():
                    batches += 1
            else:
                order = torch.tensor(list(dm.epoch_sampler), device=train.x.device)
                for batch in order.split(batch_size):
                    train.x[batch], train.labels[batch]
                    batches += 1
        synchronize()
        timings[side] = (time.perf_counter() - start) / batches * 1e6
    return timings["lightsum"], timings["plain"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs", type=int, default=5, help="epochs per timing (a multiple of figures.every_n_epochs)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=["flat:50", "sequence:50", "flat:1024", "sequence:1024"])
    parser.add_argument("--accelerator", default="cpu", help="trainer.accelerator for both sides (cpu, gpu)")
    parser.add_argument("--num-samples", type=int, help="data.num_samples (seed config: 10000)")
    opts = parser.parse_args()
    OPTIONS.append(f"--trainer.accelerator={opts.accelerator}")
    if opts.num_samples:
        OPTIONS.append(f"--data.num_samples={opts.num_samples}")
    device = (
        torch.cuda.get_device_name() if opts.accelerator == "gpu" else f"CPU, torch threads {torch.get_num_threads()}"
    )
    print(f"seed config {' '.join(OPTIONS)}, {opts.epochs} epochs per timing, median of {opts.repeats}, {device}")
    print(
        f"{'layout':9s} {'batch':>5s} {'plain samples/s':>16s} {'lightsum samples/s':>19s} {'ratio':>6s} {'range':>9s} "
        f"{'lightsum s/epoch':>17s} {'data us/batch lightsum':>23s} {'plain':>6s}"
    )
    for case in opts.cases:
        layout, batch = case.split(":")
        plain, light = [], []
        for _ in range(opts.repeats):  # alternate so drift in machine load hits both alike
            seconds, n = plain_epoch_seconds(layout, int(batch), opts.epochs)
            plain.append(n / seconds)
            seconds, n = lightning_epoch_seconds(layout, int(batch), opts.epochs)
            light.append(n / seconds)
        p, q = statistics.median(plain), statistics.median(light)
        # The ratio of each adjacent (plain, lightsum) pair: the machine's speed drifts between
        # repeats, and a pair shares it; the median of the pairs and their range are printed.
        ratios = [b / a for a, b in zip(plain, light)]
        data_light, data_plain = data_path_us(layout, int(batch), opts.epochs)
        print(
            f"{layout:9s} {batch:>5s} {p:16.0f} {q:19.0f} {statistics.median(ratios):6.3f} "
            f"{min(ratios):.2f}-{max(ratios):.2f} {n / q:17.3f} {data_light:23.1f} {data_plain:6.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
