"""The imbalance strategies on a user's own files, through the real CLI: the table in docs/your-data.md.

Each (strategy, seed) is one ``python -m lightsum fit --config configs/files.yaml`` on
``DATA/train.npz`` (lightsum carves its stratified validation split from it, and tunes the decision
threshold there), in its own run folder ``OUT/<strategy>/seed_<s>/version_<n>``, then one
``python -m lightsum test`` of that fit's best checkpoint on ``DATA/test.npz``. The table gives, per
strategy, the mean ± sample standard deviation over the seeds of the test set's worse per-class
recall, the minority's recall and average precision, balanced accuracy, and the fit's wall time (start-up
included). Fits run one after another: timings on a shared machine are only comparable that way.

    python benchmarks/watch_dataset.py                   # data/watch/train.npz and test.npz
    python benchmarks/your_data_table.py                 # 6 strategies x seeds 0 1 2
    python benchmarks/your_data_table.py --seeds 0 --strategies none oversample --epochs 2   # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Each strategy: its overrides on top of configs/files.yaml (whose defaults are no resampling, BCE).
STRATEGIES = {
    "none": [],
    "oversample": ["--data.sampling", "oversample"],
    "weighted": ["--data.sampling", "weighted"],
    "pos_weight balanced": ["--model.pos_weight", "balanced"],
    "focal": ["--model.loss", "focal"],
    "logit_adjusted": ["--model.loss", "logit_adjusted"],
}
COLUMNS = {  # table heading -> the metric `lightsum test` prints ("minority recall" set in main)
    "min recall": "test/min_recall",
    "minority recall": None,
    "minority AP": "test/average_precision_minority",
    "balanced accuracy": "test/balanced_accuracy",
}
# `lightsum test` prints Lightning's table of test metrics: "  test/min_recall   0.94..." (with or
# without rich's box characters between the columns).
METRIC_LINE = re.compile(r"^[\s│|]*(test/[\w/]+)[\s│|]+([-+0-9.eE]+|nan)[\s│|]*$")
FINISHED = re.compile(r"lightsum: fit finished: (.+?) \(")
BEST = re.compile(r"best checkpoint\s+(.+?\.ckpt)\s+\(")


def lightsum(subcommand: str, args: list[str]) -> str:
    """Run one lightsum command; its output (stdout and stderr), or exit with both shown."""
    cmd = [sys.executable, "-m", "lightsum", subcommand, *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(cmd)}\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def trial(strategy: str, seed: int, opts: argparse.Namespace) -> dict[str, float | str]:
    data = [
        "--config",
        "configs/files.yaml",
        "--data.train_path",
        str(opts.data / "train.npz"),
        "--data.test_path",
        str(opts.data / "test.npz"),
        "--data.seed",
        str(seed),  # the validation split and the sampler, as the fit's summary says to repeat
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(opts.out),
        "--trainer.logger.init_args.name",
        f"{strategy.split()[0]}/seed_{seed}",
    ]
    fit_args = [
        *data,
        *STRATEGIES[strategy],
        "--seed_everything",
        str(seed),
        "--trainer.max_epochs",
        str(opts.epochs),
        "--lr_scheduler.init_args.T_max",
        str(opts.epochs),  # the cosine decay ends with the last epoch
        "--trainer.enable_model_summary",
        "false",
    ]
    start = time.perf_counter()
    fit_out = lightsum("fit", fit_args)
    seconds = time.perf_counter() - start
    run_dir, best = FINISHED.search(fit_out), BEST.search(fit_out)
    if not (run_dir and best):
        sys.exit(f"no run folder or best checkpoint in the output of fit ({strategy}, seed {seed}):\n{fit_out}")
    # The test run logs into the checkpoint's run folder; its metrics are read from its printout.
    test_out = lightsum("test", [*data, "--ckpt_path", best.group(1)])
    metrics = {m.group(1): float(m.group(2)) for m in map(METRIC_LINE.match, test_out.splitlines()) if m}
    missing = [tag for tag in (*COLUMNS.values(), "test/decision_threshold") if tag not in metrics]
    if missing:
        sys.exit(f"lightsum test printed no {', '.join(missing)} ({strategy}, seed {seed}):\n{test_out}")
    return {**metrics, "seconds": seconds, "run_dir": run_dir.group(1), "checkpoint": best.group(1)}


def cell(values: list[float], digits: int) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/watch"), help="folder of train.npz and test.npz")
    parser.add_argument("--out", type=Path, default=Path("lightning_logs/your_data_table"), help="run folders")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES, metavar="NAME")
    # 8 epochs, not configs/files.yaml's 20: on the watch data the best checkpoints of 20-epoch
    # probes came at epochs 1-14, and an oversampled fit (twice the steps an epoch) took 1.5-4 min
    # on 2 busy CPU cores.
    parser.add_argument("--epochs", type=int, default=8, help="trainer.max_epochs and the cosine's T_max")
    opts = parser.parse_args()
    for name in ("train.npz", "test.npz"):
        if not (opts.data / name).is_file():
            parser.error(f"{opts.data / name} not found: run benchmarks/watch_dataset.py --out {opts.data} first")
    # The minority, measured on the test set (lightsum's own figures measure it the same way).
    labels = np.load(opts.data / "test.npz")["y"]
    COLUMNS["minority recall"] = f"test/recall_{0 if (labels == 0).sum() < (labels == 1).sum() else 1}"

    results: dict[str, list[dict]] = {}
    for strategy in opts.strategies:
        for seed in opts.seeds:
            r = trial(strategy, seed, opts)
            results.setdefault(strategy, []).append({"seed": seed, **r})
            shown = "  ".join(f"{k} {r[v]:.4f}" for k, v in COLUMNS.items())
            print(
                f"{strategy}, seed {seed}: {shown}  threshold {r['test/decision_threshold']:.4f}  "
                f"fit {r['seconds']:.0f} s  {r['checkpoint']}",
                file=sys.stderr,
                flush=True,
            )
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "results.json").write_text(json.dumps(results, indent=1))  # every trial, for a second look

    print(f"\nCommand: `python {shlex.join(sys.argv)}`, {datetime.date.today().isoformat()}")
    print(f"{opts.epochs} epochs a fit, seeds {' '.join(map(str, opts.seeds))}; mean ± std over the seeds\n")
    print("| strategy | overrides | " + " | ".join(COLUMNS) + " | fit (s) |")
    print("| --- | --- |" + " --- |" * (len(COLUMNS) + 1))
    for strategy, trials in results.items():
        cells = [cell([t[tag] for t in trials], 3) for tag in COLUMNS.values()]
        cells.append(cell([t["seconds"] for t in trials], 0))
        overrides = f"`{' '.join(STRATEGIES[strategy])}`" if STRATEGIES[strategy] else "(none)"
        print(f"| {strategy} | {overrides} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
