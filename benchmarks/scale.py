"""Data generation time and peak memory, and data-path epoch time, for growing N.

Run from the repository root: ``python benchmarks/scale.py [--sizes 100000 1000000 10000000]``.

Each (N, distribution) runs in a fresh process, so its peak resident memory is its own: the
increase of the process's peak RSS over its level just before ``setup("fit")`` (imports, and the
synthesis tables, already loaded) is compared with the digits' own size, N x seq_len bytes (uint8;
train + validation). The epoch time is one pass of the training loader (oversampled, batch 256),
the data path alone: the model's compute per sample does not depend on N.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(n: int, distribution: str, batch_size: int) -> dict:
    """Runs in the child process."""
    import torch

    from lightsum import SumDataModule

    torch.set_num_threads(2)
    SumDataModule(num_samples=1000, train_distribution="balanced").setup("fit")  # tables, allocator
    data = SumDataModule(num_samples=n, batch_size=batch_size, sampling="oversample", train_distribution=distribution)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    data.setup("fit")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    loader = data.train_dataloader()
    start = time.perf_counter()
    rows = sum(len(batch.labels) for batch in loader)
    epoch = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_bytes": peak,
        "digit_bytes": n * data.hparams.seq_len,
        "epoch_seconds": epoch,
        "epoch_rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.child[1], args.batch_size)))
        return
    print(
        "N, distribution: setup('fit') seconds | peak RSS increase / digits' uint8 bytes | "
        f"one oversampled training epoch, data path only (batch {args.batch_size})"
    )
    print(
        f"{'N':>10} {'distribution':<9} {'gen s':>7} {'peak MB':>8} {'digits MB':>9} {'ratio':>6} "
        f"{'epoch s':>8} {'rows':>10} {'us/row':>7}"
    )
    for n in args.sizes:
        for distribution in ("natural", "balanced"):
            out = subprocess.run(
                [sys.executable, __file__, "--batch-size", str(args.batch_size), "--child", str(n), distribution],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{n:>10,} {distribution:<9} {r['seconds']:7.2f} {r['peak_bytes'] / 1e6:8.1f} "
                f"{r['digit_bytes'] / 1e6:9.1f} {r['peak_bytes'] / r['digit_bytes']:6.2f} "
                f"{r['epoch_seconds']:8.2f} {r['epoch_rows']:>10,} {r['epoch_seconds'] / r['epoch_rows'] * 1e6:7.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
