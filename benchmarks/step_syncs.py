"""Host-device synchronisations per training step on a GPU (CUDA's sync debug mode).

Fits one epoch of ``configs/default.yaml`` on a small data set with
``torch.cuda.set_sync_debug_mode("warn")`` switched on during the training steps (data fetch
included) and off during validation, and counts the warnings. lightsum's per-step work stays on
the device: ``train/loss`` is read back once per 50 steps (``callbacks.TrainLoss``) and the
training recall's counts are sums on the device, so the expected count is about steps / 50 plus a
few per epoch; one per step would mean every step waits on the host.

    python benchmarks/step_syncs.py [--num-samples 20000]
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import warnings

import pytorch_lightning as pl
import torch

from lightsum.cli import build_cli


class SyncWatch(pl.Callback):
    """Sync debug mode on for the training steps, off for validation (which syncs by design)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.cuda.set_sync_debug_mode("warn")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.cuda.set_sync_debug_mode(0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.cuda.set_sync_debug_mode(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=20_000)
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("step_syncs.py needs a CUDA device")
    with tempfile.TemporaryDirectory() as root:
        cli = build_cli(
            [
                "--trainer.accelerator=gpu",
                "--trainer.devices=1",
                "--trainer.max_epochs=1",
                "--trainer.enable_progress_bar=false",
                "--trainer.num_sanity_val_steps=0",
                f"--data.num_samples={opts.num_samples}",
                f"--trainer.logger.init_args.save_dir={root}",
            ],
            run=False,
        )
        cli.trainer.callbacks.append(SyncWatch())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    steps = cli.trainer.global_step
    print(
        f"data on {cli.datamodule.train_set.x.device}; {steps} training steps, {len(syncs)} host syncs "
        f"({len(syncs) / max(steps, 1):.3f} per step; train/loss flushes every 50 steps: {steps // 50 + 1})"
    )
    for message, count in collections.Counter(syncs).most_common(5):
        print(f"  {count:5d} x {message}")


if __name__ == "__main__":
    main()
