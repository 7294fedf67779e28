"""Compare imbalance strategies: same step budget, several seeds, 100k natural test set.

Each (strategy, seed) trains once with ``decision_threshold=tuned`` through the real CLI, then its
best checkpoint is scored on the natural test set twice: at the tuned threshold and at 0.5.

    python benchmarks/strategy_table.py                 # full table (see README for the time)
    python benchmarks/strategy_table.py --steps 50 --seeds 0   # smoke run
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
from lightsum.cli import main
from lightsum.metrics import class_metrics

OVERLAYS = Path(__file__).resolve().parents[1] / "configs" / "strategies"
STRATEGIES = ("none", "oversample", "undersample", "weighted", "pos_weight", "balanced")
COLUMNS = ("recall_0", "recall_1", "min_recall", "balanced_accuracy", "auroc")


def run(strategy: str, seed: int, steps: int, extra: list[str], root: Path) -> dict[str, dict[str, float]]:
    args = [
        f"--config={OVERLAYS / strategy}.yaml", *extra,
        f"--seed_everything={seed}", f"--data.seed={seed}",
        f"--trainer.max_steps={steps}", "--trainer.max_epochs=-1",
        # Validate a few times over the budget so every strategy gets the same checkpoint choices.
        f"--trainer.val_check_interval={max(steps // 5, 1)}", "--trainer.check_val_every_n_epoch=null",
        "--model.decision_threshold=tuned",
        f"--trainer.logger.init_args.save_dir={root}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ]
    start = time.perf_counter()
    cli = main(["fit", *args])
    seconds = time.perf_counter() - start
    model = SumClassifier.load_from_checkpoint(cli.trainer.checkpoint_callback.best_model_path)
    dm = cli.datamodule
    dm.setup("test")
    probs = torch.as_tensor(model.predict_proba(dm.test_set.digits))
    target = dm.test_set.labels
    out = {}
    for name, threshold in (("tuned", float(model.decision_threshold)), ("0.5", 0.5)):
        out[name] = {k: float(v) for k, v in class_metrics(probs, target, threshold).items()}
        out[name]["seconds"] = seconds
    return out


def main_table() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps per run (the shared budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more CLI overrides for every run")
    opts = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for strategy in opts.strategies:
            results = [run(strategy, seed, opts.steps, opts.extra, Path(root)) for seed in opts.seeds]
            for threshold in ("0.5", "tuned"):
                cells = []
                for col in (*COLUMNS, "seconds"):
                    values = [r[threshold][col] for r in results]
                    std = statistics.stdev(values) if len(values) > 1 else 0.0
                    cells.append(f"{statistics.mean(values):.0f} ± {std:.0f}" if col == "seconds"
                                 else f"{statistics.mean(values):.4f} ± {std:.4f}")
                rows.append(f"| {strategy} | {threshold} | " + " | ".join(cells) + " |")
                print(rows[-1], file=sys.stderr, flush=True)
    print(f"\n{opts.steps} steps per run, seeds {opts.seeds}, extra overrides: {' '.join(opts.extra) or 'none'}")
    print("| strategy | threshold | " + " | ".join(COLUMNS) + " | seconds |")
    print("|" + " --- |" * (len(COLUMNS) + 3))
    print("\n".join(rows))


if __name__ == "__main__":
    main_table()
