"""Training-step speed of variable-length batches: packed sequences against the whole padded batch
with each row's last state gathered, for the fused (sigmoid) LSTM; full-length batches beside them.

Times one forward + backward of SumNet (BCE-with-logits loss, train mode) on a batch of sequences
whose lengths are uniform in 1..T (the rest padding), packed (``pack_padded_sequence``, what lightsum
does on a GPU) and gathered (what it does on a CPU), alternately in several rounds, median per step.
Both read each sequence to its own last step and give the same logits (tests/test_sumnet.py).

    python benchmarks/lengths_speed.py [--device cuda] [--threads 1] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from lightsum.nn import SumNet, sumnet


def step_seconds(net: SumNet, x: torch.Tensor, lengths: torch.Tensor | None, target: torch.Tensor, steps: int) -> float:
    def one() -> None:
        net.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(net(x, lengths), target).backward()

    one()  # warm-up: kernels, allocator
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10, help="steps timed per round")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    print("| batch | T | hidden | full length ms | packed ms | gathered ms | packed / gathered |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for batch, steps_per_seq, hidden in ((64, 24, 64), (256, 30, 64), (256, 100, 64)):
        torch.manual_seed(0)
        net = SumNet(1, hidden).to(args.device).train()
        x = torch.randn(batch, steps_per_seq, 1, device=args.device)
        lengths = torch.randint(1, steps_per_seq + 1, (batch,))
        target = torch.randint(0, 2, (batch,), device=args.device).float()
        times: dict[str, list[float]] = {"full": [], "packed": [], "gathered": []}
        for _ in range(args.rounds):
            for name in times:  # alternating: drifting load hits all three alike
                sumnet.packs = (lambda lstm, x: True) if name == "packed" else (lambda lstm, x: False)
                times[name].append(step_seconds(net, x, None if name == "full" else lengths, target, args.steps))
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(
            f"| {batch} | {steps_per_seq} | {hidden} | {ms['full']:.1f} | {ms['packed']:.1f} | {ms['gathered']:.1f} "
            f"| {ms['packed'] / ms['gathered']:.2f} |"
        )


if __name__ == "__main__":
    main()
