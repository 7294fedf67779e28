"""Score a checkpoint where it matters: a fresh natural test set and the hard sums near the threshold.

    python benchmarks/evaluate.py lightning_logs/default/version_0/checkpoints/best-*.ckpt

Prints the headline metrics on ``--natural`` fresh natural sequences (a stream no training run
uses), then accuracy on sequences drawn exactly from each digit sum in ``--sums`` (equal numbers per
sum), and the error rate by digit sum over the natural set: where the model still fails.
"""

from __future__ import annotations

import argparse

import torch

from lightsum import SumClassifier
from lightsum.data.digit_sums import labels_of, natural_digits
from lightsum.data.synthesis import digits_per_sum
from lightsum.metrics import class_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--natural", type=int, default=100_000, help="size of the fresh natural test set")
    parser.add_argument("--sums", type=int, nargs=2, default=[95, 104], metavar=("LO", "HI"))
    parser.add_argument("--per-sum", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=2024, help="seed of the fresh sets (not a training seed)")
    opts = parser.parse_args()

    model = SumClassifier.load_from_checkpoint(opts.checkpoint, map_location="cpu")
    seq_len = model.hparams.seq_len
    # The threshold of the label lives in the data config saved beside the model's hyperparameters.
    ckpt = torch.load(opts.checkpoint, map_location="cpu", weights_only=True)
    threshold = ckpt.get("datamodule_hyper_parameters", {}).get("threshold", 100)
    g = torch.Generator().manual_seed(opts.seed)

    digits = natural_digits(opts.natural, seq_len, g)
    target = labels_of(digits, threshold)
    probs = torch.as_tensor(model.predict_proba(digits))
    values = class_metrics(probs, target, float(model.decision_threshold))
    print(f"natural test set: {opts.natural} sequences, decision threshold {float(model.decision_threshold):.4f}")
    for name in ("recall_0", "recall_1", "min_recall", "balanced_accuracy", "accuracy", "auroc"):
        print(f"  {name:18s} {float(values[name]):.5f}")

    lo, hi = opts.sums
    hard = digits_per_sum(lo, hi, opts.per_sum, seq_len, g)
    correct = torch.as_tensor(model.predict(hard)) == labels_of(hard, threshold).long()
    print(f"sums {lo}-{hi}, {opts.per_sum} per sum (exact conditional sampling): accuracy {correct.float().mean():.4f}")
    print(
        "  "
        + "  ".join(
            f"{s}:{a:.3f}" for s, a in zip(range(lo, hi + 1), correct.view(-1, opts.per_sum).float().mean(1).tolist())
        )
    )

    wrong = torch.as_tensor(model.predict(digits)) != target.long()
    natural_sums = digits.sum(1, dtype=torch.int64)
    print(f"natural errors: {int(wrong.sum())} of {opts.natural}; by digit sum:")
    for s in torch.unique(natural_sums[wrong]).tolist():
        at = natural_sums == s
        print(f"  sum {s}: {int((wrong & at).sum())} wrong of {int(at.sum())}")


if __name__ == "__main__":
    main()
