"""Time exact class-conditional synthesis against plain uniform digits.

Run from the repository root: ``python benchmarks/synthesis_speed.py [--n 1000000] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lightsum.data.synthesis import class_digits


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, after one untimed warm-up (tables, allocator)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000, help="sequences per run (half of each class)")
    parser.add_argument("--seq-len", type=int, default=30)
    parser.add_argument("--threshold", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n, seq_len, threshold = args.n, args.seq_len, args.threshold
    g = torch.Generator().manual_seed(0)

    start = time.perf_counter()
    class_digits(1, 0, seq_len, threshold, g)  # first call builds and caches the tables
    print(f"tables (first call, seq_len {seq_len}): {time.perf_counter() - start:.3f} s")

    def balanced() -> torch.Tensor:
        return torch.cat(
            [
                class_digits(n // 2, 0, seq_len, threshold, g),
                class_digits(n - n // 2, 1, seq_len, threshold, g),
            ]
        )

    def natural() -> torch.Tensor:
        return torch.randint(0, 10, (n, seq_len), dtype=torch.uint8, generator=g)

    print(
        f"{n:,} sequences, seq_len {seq_len}, threshold {threshold}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    for name, fn in [("balanced class_digits", balanced), ("natural torch.randint", natural)]:
        seconds = median_seconds(fn, args.repeats)
        print(f"  {name:<22} {seconds:7.3f} s  {n / seconds:13,.0f} sequences/s")


if __name__ == "__main__":
    main()
