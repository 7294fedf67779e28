"""What one optimizer step costs through Lightning's public API, measured inside a live fit.

The flat layout at batch 50 takes ~2 ms per optimizer step on a small CPU, so a fixed cost per step
bounds how close any Lightning loop can come to a plain PyTorch loop. In a running fit of
``configs/seed.yaml`` (manual optimization, as ``data.steps_per_execution > 1`` uses), a callback
times the same step taken three ways, interleaved in chunks of 20 steps, and prints medians:

- ``plain``: forward, loss, ``zero_grad``, ``loss.backward()``, ``optimizer.step()`` on the raw
  torch optimizer: what the plain loop of benchmarks/overhead.py does.
- ``lightning API``: the same through Lightning's manual optimization:
  ``LightningOptimizer.zero_grad``, ``self.manual_backward(loss)``, ``LightningOptimizer.step()``
  (hook dispatch to every callback and the module, precision plugin, step counters).
- ``lightsum step``: ``SumClassifier``'s step as ``training_step`` takes it: the above plus the
  buffered ``train/loss`` points, training recall and epoch loss.

The last column is the best epoch ratio (plain / lightsum) that this per-step cost alone allows,
before validation, checkpoints, logging and the progress bar add anything.

    python benchmarks/step_cost.py [--layout flat] [--batch-size 50] [--cycles 60]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from overhead import build  # benchmarks/ is on the path when this script runs

CHUNK = 20  # steps per timed chunk; chunks of the variants alternate


class StepCost(pl.Callback):
    def __init__(self, cycles: int) -> None:
        self.cycles = cycles

    def on_train_epoch_end(self, trainer: pl.Trainer, model: pl.LightningModule) -> None:
        batches = [b for group in trainer.train_dataloader for b in group][:CHUNK]  # the loader's own batches
        optimizer = model.optimizers()
        raw = optimizer.optimizer

        def plain(digits: torch.Tensor, target: torch.Tensor) -> None:
            loss = F.binary_cross_entropy_with_logits(model.net(model.features(digits)), target.float())
            raw.zero_grad()
            loss.backward()
            raw.step()

        def lightning_api(digits: torch.Tensor, target: torch.Tensor) -> None:
            loss = F.binary_cross_entropy_with_logits(model.net(model.features(digits)), target.float())
            optimizer.zero_grad()
            model.manual_backward(loss)
            optimizer.step()

        def lightsum_step(digits: torch.Tensor, target: torch.Tensor) -> None:
            loss = model._step_loss(digits, target)
            optimizer.zero_grad()
            model.manual_backward(loss)
            optimizer.step()
            model._step_schedulers("step")

        variants = {"plain": plain, "lightning API": lightning_api, "lightsum step": lightsum_step}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(self.cycles):
            for name, step in variants.items():
                start = time.perf_counter()
                for digits, target in batches:
                    step(digits, target)
                times[name].append((time.perf_counter() - start) / len(batches) * 1e6)
        model._pending_losses.clear()  # the probe's points are not part of the run
        model._pending_recall.clear()
        base = statistics.median(times["plain"])
        print(f"{'step':14s} {'us/step':>8s} {'extra us':>9s} {'best epoch ratio':>17s}")
        for name, values in times.items():
            us = statistics.median(values)
            print(f"{name:14s} {us:8.1f} {us - base:9.1f} {base / us:17.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="flat", choices=["flat", "sequence"])
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=60, help="chunks of 20 steps timed per variant")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        cli = build(opts.layout, opts.batch_size, 1, root, "--trainer.enable_progress_bar=false")
        print(f"seed config, {opts.layout} layout, batch {opts.batch_size}, CPU torch threads {torch.get_num_threads()}, "
              f"median of {opts.cycles} chunks of {CHUNK} steps per variant")
        cli.trainer.callbacks.append(StepCost(opts.cycles))
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


if __name__ == "__main__":
    main()
