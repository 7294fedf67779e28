"""The notebook's model in Keras 3 against ``configs/seed.yaml`` as shipped, seconds per epoch.

    pip install -e ".[benchmark]"          # keras (3), an optional extra: lightsum does not need it
    python benchmarks/keras_speed.py [--epochs 6] [--rounds 5]

Keras runs on its torch backend (set here before keras is imported), on the same torch threads.
Both sides train on the same 8,000 natural sequences of the seed config's data module and
validate on its 2,000 every epoch, batch 50, Adam(1e-3), binary cross-entropy:

- Keras: ``Input((1, 30)) -> LSTM(200, recurrent_activation="hard_sigmoid", unit_forget_bias=True)
  -> Dropout(0.5) -> Dense(1, sigmoid)``, ``fit(..., validation_data=...)`` with the notebook's
  accuracy metric, ``verbose=0``. Keras 3's ``hard_sigmoid`` is ``relu6(x + 3) / 6`` (Keras 2's was
  ``clip(0.2 x + 0.5, 0, 1)``, which lightsum runs): the same cost, a different slope.
- lightsum: ``python -m lightsum fit --config configs/seed.yaml`` as shipped, through ``build_cli``
  (TensorBoard logging, metrics, both checkpoints every epoch, figures every 10th epoch, progress bar).

A side's seconds per epoch is the median interval between the ends of consecutive epochs (each
epoch's validation included; the first epoch, which pays for warm-up, only starts the clock). The
sides alternate, ``--rounds`` times; the ratio is the median of each round's own Keras / lightsum.
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported, here or by anything else

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

SEED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "seed.yaml"


def median_interval(ends: list[float]) -> float:
    return statistics.median(b - a for a, b in zip(ends, ends[1:]))


class EpochEnds(pl.Callback):
    """The time each training epoch ends, after its validation (Lightning validates inside the epoch)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ends.append(time.perf_counter())


def lightsum_seconds(epochs: int) -> float:
    from lightsum.cli import build_cli

    with tempfile.TemporaryDirectory() as root:
        cli = build_cli(
            [
                "--config",
                str(SEED_CONFIG),
                f"--trainer.max_epochs={epochs}",
                f"--trainer.logger.init_args.save_dir={root}",
            ],
            run=False,
        )
        clock = EpochEnds()
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return median_interval(clock.ends)


def seed_data() -> tuple[torch.Tensor, ...]:
    """The seed config's training and validation digits (float, (N, 1, 30)) and labels."""
    from lightsum.cli import build_cli

    with tempfile.TemporaryDirectory() as root:
        cli = build_cli(["--config", str(SEED_CONFIG), f"--trainer.logger.init_args.save_dir={root}"], run=False)
    dm = cli.datamodule
    dm.setup("fit")
    train, val = dm.train_set, dm.validation_set
    return (
        train.x.float().unsqueeze(1),
        train.labels.float(),
        val.x.float().unsqueeze(1),
        val.labels.float(),
    )


def keras_seconds(epochs: int, data: tuple[torch.Tensor, ...]) -> float:
    import keras

    x, y, x_val, y_val = (t.numpy() for t in data)
    model = keras.Sequential(
        [
            keras.Input((1, x.shape[2])),
            keras.layers.LSTM(200, recurrent_activation="hard_sigmoid", unit_forget_bias=True),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    ends: list[float] = []
    clock = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()))
    model.fit(x, y, batch_size=50, epochs=epochs, validation_data=(x_val, y_val), verbose=0, callbacks=[clock])
    return median_interval(ends)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run (the first only starts the clock)")
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    import keras

    data = seed_data()
    print(
        f"keras {keras.__version__} (backend {keras.backend.backend()}), torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}; {opts.epochs} epochs a run, {opts.rounds} alternating rounds"
    )
    table = [f"{'round':>6s} {'keras s/epoch':>14s} {'lightsum s/epoch':>17s} {'keras / lightsum':>17s}"]
    rows = []
    for round_ in range(opts.rounds):
        k = keras_seconds(opts.epochs, data)
        s = lightsum_seconds(opts.epochs)
        rows.append((k, s))
        table.append(f"{round_:6d} {k:14.3f} {s:17.3f} {k / s:17.2f}")
        print("\n".join(table), flush=True)  # so far; lightsum's progress bars print between
    ratios = [k / s for k, s in rows]
    table.append(
        f"{'median':>6s} {statistics.median(k for k, _ in rows):14.3f} {statistics.median(s for _, s in rows):17.3f} "
        f"{statistics.median(ratios):17.2f}  (rounds {min(ratios):.2f}-{max(ratios):.2f})"
    )
    print("\n" + "\n".join(table))


if __name__ == "__main__":
    main()
