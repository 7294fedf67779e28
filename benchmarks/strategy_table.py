"""Compare imbalance strategies: one step budget, several seeds, fresh natural and boundary test sets.

Each (strategy, seed) trains the default model through the real CLI for ``--steps`` optimizer
steps with the learning rate on a cosine decay over those steps (the default's schedule is per
epoch, and epochs differ in length between strategies), validating 5 times; its best checkpoint
(by the default's val/boundary_accuracy, threshold tuned on the calibration set) is then scored on data no run trains
or tunes on: a fresh natural set and a fresh boundary set (sums threshold-5 .. threshold+4, equal
numbers, exact conditional sampling), at the tuned threshold and at 0.5.

    python benchmarks/strategy_table.py                          # the table in docs/configs.md
    python benchmarks/strategy_table.py --steps 50 --seeds 0 --strategies none boundary   # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lightsum import SumClassifier
from lightsum.cli import SumCLI, build_cli, quiet_notices
from lightsum.data.digit_sums import labels_of, natural_digits
from lightsum.data.synthesis import digits_per_sum
from lightsum.metrics import class_metrics

# Each strategy: the overrides that make it from the packaged default (the default's own
# sampling and distribution are reset first, so a row holds only what it names).
STRATEGIES = {
    "none": [],
    "oversample": ["--data.sampling=oversample"],
    "undersample": ["--data.sampling=undersample"],
    "weighted": ["--data.sampling=weighted"],
    "pos_weight": ["--model.pos_weight=balanced"],
    "balanced": ["--data.train_distribution=balanced"],
    "focal": ["--model.loss=focal", "--model.focal_alpha=0.25"],
    "logit_adjusted": ["--model.loss=logit_adjusted"],
    "boundary": ["--data.train_distribution=boundary"],
    "boundary+oversample": ["--data.train_distribution=boundary", "--data.sampling=oversample"],
    "boundary+oversample+redraw": [
        "--data.train_distribution=boundary",
        "--data.sampling=oversample",
        "--data.boundary_redraw=true",
    ],
}
BASE = [
    "--data.sampling=none",
    "--data.train_distribution=natural",
    "--data.boundary_redraw=false",
    "--model.loss=bce",
    "--model.pos_weight=null",
]
COLUMNS = ("recall_0", "recall_1", "min_recall", "missed", "boundary_accuracy", "at_threshold", "auroc")


class StepCosineCLI(SumCLI):
    """The lightsum CLI with the learning-rate scheduler stepped after every optimizer step."""

    @staticmethod
    def configure_optimizers(lightning_module, optimizer, lr_scheduler=None):
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}


def fresh_sets(
    seq_len: int, threshold: int, natural: int, per_sum: int, seed: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)  # a seed no training or tuning stream uses
    digits = natural_digits(natural, seq_len, g)
    boundary = digits_per_sum(threshold - 5, threshold + 4, per_sum, seq_len, g)
    return {"natural": (digits, labels_of(digits, threshold)), "boundary": (boundary, labels_of(boundary, threshold))}


def run(strategy: str, seed: int, opts: argparse.Namespace, root: Path) -> dict[str, dict[str, float]]:
    steps = opts.steps
    args = [
        *BASE,
        *STRATEGIES[strategy],
        *opts.extra,
        f"--seed_everything={seed}",
        f"--data.seed={seed}",
        f"--trainer.max_steps={steps}",
        "--trainer.max_epochs=-1",
        f"--lr_scheduler.T_max={steps}",
        f"--trainer.val_check_interval={max(steps // 5, 1)}",
        "--trainer.check_val_every_n_epoch=null",
        "--model.decision_threshold=tuned",
        f"--trainer.logger.init_args.save_dir={root}",
        f"--trainer.logger.init_args.name={strategy}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    start = time.perf_counter()
    with quiet_notices():
        cli = build_cli(["fit", *args], cli_class=StepCosineCLI)
    seconds = time.perf_counter() - start
    model = SumClassifier.load_from_checkpoint(cli.trainer.checkpoint_callback.best_model_path, map_location="cpu")
    h = cli.datamodule.hparams
    sets = fresh_sets(h.seq_len, h.threshold, opts.natural, opts.per_sum, opts.test_seed)
    probs = {name: torch.as_tensor(model.predict_proba(digits)) for name, (digits, _) in sets.items()}
    out = {}
    for name, threshold in (("tuned", float(model.decision_threshold)), ("0.5", 0.5)):
        values = {k: float(v) for k, v in class_metrics(probs["natural"], sets["natural"][1], threshold).items()}
        values["missed"] = values["missed_0"] + values["missed_1"]
        correct = ((probs["boundary"] >= threshold).long() == sets["boundary"][1].long()).float()
        values["boundary_accuracy"] = float(correct.mean())
        values["at_threshold"] = float(correct.view(10, -1)[5].mean())  # the sums equal to the threshold
        values["seconds"] = seconds
        out[name] = values
    return out


def main_table() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps per run (the shared budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--natural", type=int, default=100_000, help="size of the fresh natural test set")
    parser.add_argument("--per-sum", type=int, default=2_000, help="fresh boundary sequences per sum")
    parser.add_argument("--test-seed", type=int, default=2024, help="seed of the fresh test sets")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more CLI overrides for every run")
    opts = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for strategy in opts.strategies:
            results = [run(strategy, seed, opts, Path(root)) for seed in opts.seeds]
            for threshold in ("0.5", "tuned"):
                cells = []
                for col in (*COLUMNS, "seconds"):
                    values = [r[threshold][col] for r in results]
                    std = statistics.stdev(values) if len(values) > 1 else 0.0
                    cells.append(
                        f"{statistics.mean(values):.0f} ± {std:.0f}"
                        if col in ("seconds", "missed")
                        else f"{statistics.mean(values):.4f} ± {std:.4f}"
                    )
                rows.append(f"| {strategy} | {threshold} | " + " | ".join(cells) + " |")
                print(rows[-1], file=sys.stderr, flush=True)
    print(f"\n{opts.steps} steps per run, seeds {opts.seeds}, extra overrides: {' '.join(opts.extra) or 'none'}")
    print("| strategy | threshold | " + " | ".join(COLUMNS) + " | seconds |")
    print("|" + " --- |" * (len(COLUMNS) + 3))
    print("\n".join(rows))


if __name__ == "__main__":
    main_table()
