"""Training-step speed of the fused nn.LSTM (sigmoid) vs lightsum's hard_sigmoid LSTM.

Times one forward + backward of SumNet (BCE-with-logits loss, train mode) for both recurrent
activations, in the sequence layout (B, 30, 1) and the flat layout (B, 1, 30), at two batch sizes.
The two models share weights and inputs; they are timed alternately, in several rounds, and the
median per-step time is reported, so that drift in machine load hits both alike.

    python benchmarks/cell_speed.py [--device cuda] [--threads 1] [--rounds 7]

On a shared CPU, other busy processes make OpenMP's thread barriers stall (the fused oneDNN kernel
suffers most, by 10x or more): the script prints the load average; compare runs on an idle machine,
or with --threads 1, which is far less sensitive.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from lightsum.nn import SumNet

SEQ_LEN = 30
HIDDEN = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7, help="alternating timing rounds per case")
    parser.add_argument("--round-seconds", type=float, default=0.2, help="target time per model per round")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[50, 1024])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, hidden {HIDDEN}, "
        f"load average {load:.2f} on {os.cpu_count()} CPUs"
    )
    header = f"{'layout':9s} {'batch':>5s} {'fused sigmoid':>14s} {'hard_sigmoid':>13s} {'ratio':>6s}"
    print(header + "   (ms per fwd+bwd step)")
    gen = torch.Generator().manual_seed(0)
    for layout, steps, features in (("sequence", SEQ_LEN, 1), ("flat", 1, SEQ_LEN)):
        for batch in args.batch_sizes:
            fused = SumNet(features, HIDDEN, recurrent_activation="sigmoid").to(device)
            hard = SumNet(features, HIDDEN, recurrent_activation="hard_sigmoid").to(device)
            hard.load_state_dict(fused.state_dict())
            x = torch.randint(0, 10, (batch, steps, features), generator=gen).float().div(9).to(device)
            y = torch.randint(0, 2, (batch,), generator=gen).float().to(device)

            def step(model: SumNet, x: torch.Tensor = x, y: torch.Tensor = y) -> None:  # this round's batch
                model.zero_grad(set_to_none=True)
                F.binary_cross_entropy_with_logits(model(x), y).backward()

            models = {"fused": fused, "hard": hard}
            per_round = {}
            for name, model in models.items():  # warm up, and size the rounds
                for _ in range(2):
                    step(model)
                sync()
                start = time.perf_counter()
                step(model)
                sync()
                per_round[name] = max(1, round(args.round_seconds / (time.perf_counter() - start)))
            times: dict[str, list[float]] = {name: [] for name in models}
            for _ in range(args.rounds):
                for name, model in models.items():
                    n = per_round[name]
                    sync()
                    start = time.perf_counter()
                    for _ in range(n):
                        step(model)
                    sync()
                    times[name].append((time.perf_counter() - start) / n * 1e3)
            fused_ms, hard_ms = (statistics.median(times[name]) for name in models)
            print(f"{layout:9s} {batch:5d} {fused_ms:14.2f} {hard_ms:13.2f} {hard_ms / fused_ms:6.2f}")


if __name__ == "__main__":
    main()
