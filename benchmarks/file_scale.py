"""Reading users' sequence files at scale: load time and peak memory, and a training epoch from a file.

Run from the repository root::

    python benchmarks/file_scale.py [--sizes 100000 1000000 10000000] [--formats npz npz64 parquet csv]
                                    [--dir DIR] [--keep] [--epoch-rows 100000] [--rounds 3] [--no-epoch]

For each format and N it writes a file of N sequences of 30 float steps (1 feature) with 0/1 labels
(about 10% positive): ``npz`` is ``np.savez(x=float32 (N, 30), y=int64)``, ``npz64`` the same with
float64 ``x`` (what users often have), ``parquet`` a list<float> column "sequence" and an int64
"label" column written by ``pq.write_table`` with pyarrow's defaults, ``csv`` "sequence,label" rows
of space-separated ``%.6f`` steps (csv only up to 10^6). Then, each in a fresh process so that its
peak RSS is its own:

- first read: ``SequenceFiles(train_path=...).schema()`` and ``.setup("fit")`` with no cache: the
  file is parsed, converted into the cache ``<file>.lightsum/`` and split;
- cache hit: the same in another fresh process, the cache now in place.

Each reports its wall time and the rise of the process's peak RSS (``ru_maxrss``) over its peak
just before the read (imports done), against the data's in-memory size: N x 30 x 4 bytes of
float32 steps + 8 bytes a row of lengths + 1 of label. Target: ratio <= 2.0. The last columns are
the process's resident memory after the read, split into anonymous memory and mapped file pages
(the cache's memory maps count in RSS once touched: ``schema()`` reads every training row).

The epoch: in one process (torch on one thread), alternating, one training epoch of the same
``SumClassifier`` (hidden 64, Adam, batch 256) over (A) ``SequenceFiles`` on a ``--epoch-rows`` x 30 ``.npz`` file (cache warm,
host placement) and (B) the same shapes generated in memory (a float32 (rows, 30, 1) tensor served
through the same ``SequenceSet`` and loader); the median of ``--rounds`` rounds, and the ratio A/B.
Target: <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = 30
EXTENSIONS = {"npz": ".npz", "npz64": ".npz", "parquet": ".parquet", "csv": ".csv"}
CSV_MAX = 1_000_000  # csv is written and parsed in Python: 10^7 rows would take many minutes


def in_memory_bytes(n: int) -> int:
    """What the data is in memory: float32 steps, int64 lengths, uint8 labels."""
    return n * (STEPS * 4 + 8 + 1)


# Writing (a child process: the parent stays small) ------------------------------------------------


def write(fmt: str, n: int, path: str) -> dict:
    import numpy as np

    g = np.random.default_rng(0)
    y = (g.random(n) < 0.1).astype(np.int64)
    x = g.standard_normal((n, STEPS), dtype=np.float32)
    info: dict = {}
    if fmt in ("npz", "npz64"):
        np.savez(path, x=x.astype(np.float64) if fmt == "npz64" else x, y=y)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        offsets = pa.array(np.arange(0, (n + 1) * STEPS, STEPS, dtype=np.int32))
        sequences = pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1)))
        pq.write_table(pa.table({"sequence": sequences, "label": y}), path)  # pyarrow's defaults
        meta = pq.ParquetFile(path).metadata
        info = {"row_groups": meta.num_row_groups, "group_rows": meta.row_group(0).num_rows}
    else:
        with open(path, "w") as f:
            f.write("sequence,label\n")
            for start in range(0, n, 100_000):
                block = np.column_stack([x[start : start + 100_000], y[start : start + 100_000]])
                np.savetxt(f, block, fmt=" ".join(["%.6f"] * STEPS) + ",%d")
    return info


# Reading (a child process per measurement) ---------------------------------------------------------


def memory_status() -> dict:
    """Resident memory now (bytes), anonymous and file-backed, from /proc."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def read(path: str, warm_up: str) -> dict:
    import torch

    from lightsum.data.sequence_files import SequenceFiles

    torch.set_num_threads(1)
    # A small file of the same format first, without the cache: the imports it makes (pyarrow), the
    # library code it pages in and the allocators' first arenas are a fixed cost (~75 MB), not the read's.
    small = SequenceFiles(train_path=warm_up, placement="host", cache=False)
    small.schema()
    small.setup("fit")
    del small
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    data = SequenceFiles(train_path=path, placement="host")
    data.schema()
    data.setup("fit")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "before": before, "peak": peak, **memory_status()}


# The epoch (one process, both sides alternating) ----------------------------------------------------


def epoch(path: str, rounds: int, batch_size: int) -> dict:
    import pytorch_lightning as pl
    import torch

    import lightsum
    from lightsum.data.batches import SequenceSet
    from lightsum.data.module import SequenceDataModule
    from lightsum.data.sequence_files import SequenceFiles

    # One thread: on a shared 2-core machine two OpenMP threads stall on each other's barriers
    # whenever another job runs, and an epoch's time then swings by 3-10x between rounds.
    torch.set_num_threads(1)

    class Adam(lightsum.SumClassifier):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class InMemory(SequenceDataModule):
        """The same training shapes and labels as the file's split, generated in memory."""

        def __init__(self, labels: torch.Tensor) -> None:
            super().__init__()
            self.save_hyperparameters(
                {"batch_size": batch_size, "eval_batch_size": 1024, "seed": 0, "sampling": "none"}
                | {"sampling_ratio": 1.0, "placement": "host"}
            )
            self.labels = labels

        def setup(self, stage: str) -> None:
            if self.train_set is None:
                x = torch.randn(len(self.labels), STEPS, 1, generator=torch.Generator().manual_seed(0))
                self.train_set = SequenceSet(x, self.labels)
                self.sample_training(self.labels)

    class Clock(pl.Callback):
        """The training epoch alone: Trainer set-up and teardown are not the data's."""

        def on_train_epoch_start(self, trainer, module) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            self.seconds = time.perf_counter() - self.start

    files = SequenceFiles(train_path=path, placement="host", batch_size=batch_size)
    files.setup("fit")  # the cache is warm: the parent read the file first
    memory = InMemory(files.train_set.labels.clone())
    memory.setup("fit")
    sides = {"file": files, "memory": memory}
    times: dict[str, list[float]] = {"file": [], "memory": []}
    for _ in range(rounds):
        for name, data in sides.items():  # A B A B ...
            torch.manual_seed(0)
            model = Adam(seq_len=None, schema=files.schema(), hidden_size=64, class_balance=data.class_balance)
            clock = Clock()
            trainer = pl.Trainer(
                max_epochs=1,
                limit_val_batches=0,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                accelerator="cpu",
                callbacks=[clock],
            )
            trainer.fit(model, datamodule=data)
            times[name].append(clock.seconds)
    return {"times": times, "rows": len(files.train_set), "batches": trainer.num_training_batches}


# The parent -------------------------------------------------------------------------------------------


def child(*args: str, options: tuple[str, ...] = ()) -> dict:
    out = subprocess.run([sys.executable, __file__, *options, "--child", *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def mb(n: float) -> str:
    return f"{n / 1e6:9.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--formats", nargs="+", default=list(EXTENSIONS), choices=list(EXTENSIONS))
    parser.add_argument("--dir", help="where to write the files (default: a temporary folder, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the files and their caches")
    parser.add_argument("--epoch-rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-epoch", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "write":
            result = write(rest[0], int(rest[1]), rest[2])
        elif kind == "read":
            result = read(rest[0], rest[1])
        else:
            result = epoch(rest[0], args.rounds, args.batch_size)
        print(json.dumps(result))
        return

    folder = Path(args.dir or tempfile.mkdtemp(prefix="file_scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; files in {folder}")
    print(
        "first read: SequenceFiles(...).schema() + setup('fit'), no cache | cache hit: the same, cache in place; "
        "each a fresh process. RSS = rise of peak RSS over the peak after imports; ratio = first read's rise / "
        "in-memory size (float32 steps + int64 lengths + uint8 labels); anon/file: RSS after the first read"
    )
    header = (
        f"{'format':<8} {'N':>10} {'file MB':>9} {'mem MB':>9} {'1st s':>7} {'RSS MB':>9} {'ratio':>6} "
        f"{'hit s':>6} {'hit RSS':>9} {'ratio':>6} {'base MB':>8} {'anon MB':>9} {'file MB':>9}"
    )
    print(header, flush=True)
    try:
        for fmt in args.formats:
            for n in args.sizes:
                if fmt == "csv" and n > CSV_MAX:
                    continue
                path = folder / f"{fmt}-{n}{EXTENSIONS[fmt]}"
                warm_up = folder / f"{fmt}-warm-up{EXTENSIONS[fmt]}"
                if not warm_up.exists():
                    child("write", fmt, "1000", str(warm_up))
                info = child("write", fmt, str(n), str(path))
                first = child("read", str(path), str(warm_up))
                hit = child("read", str(path), str(warm_up))
                size = in_memory_bytes(n)
                rise, hit_rise = first["peak"] - first["before"], hit["peak"] - hit["before"]
                print(
                    f"{fmt:<8} {n:>10,} {mb(path.stat().st_size)} {mb(size)} {first['seconds']:7.2f} {mb(rise)} "
                    f"{rise / size:6.2f} {hit['seconds']:6.2f} {mb(hit_rise)} {hit_rise / size:6.2f} "
                    f"{first['before'] / 1e6:8.0f} {mb(first['RssAnon'])} {mb(first['RssFile'])}"
                    + (f"   row groups: {info['row_groups']} of {info['group_rows']:,} rows" if info else ""),
                    flush=True,
                )
                if not args.keep:
                    path.unlink()
                    shutil.rmtree(f"{path}.lightsum", ignore_errors=True)
        if not args.no_epoch:
            path = folder / f"epoch-{args.epoch_rows}.npz"
            child("write", "npz", str(args.epoch_rows), str(path))
            child("read", str(path), str(path))  # builds the cache: the epoch reads it warm
            r = child("epoch", str(path), options=("--rounds", str(args.rounds), "--batch-size", str(args.batch_size)))
            file_s, memory_s = (statistics.median(r["times"][k]) for k in ("file", "memory"))
            ratios = [f / m for f, m in zip(r["times"]["file"], r["times"]["memory"])]
            print(
                f"\none training epoch, {r['rows']:,} training rows of {args.epoch_rows:,} x {STEPS} "
                f"({r['batches']} batches of {args.batch_size}), hidden 64, Adam; {args.rounds} alternating rounds"
            )
            print(f"{'side':<8} {'median s':>9}  rounds")
            for name, median in (("file", file_s), ("memory", memory_s)):
                print(f"{name:<8} {median:9.3f}  " + " ".join(f"{t:.3f}" for t in r["times"][name]))
            print(
                f"file / memory: {file_s / memory_s:.3f} (per-round pairs "
                f"{min(ratios):.3f}-{max(ratios):.3f}); load average {os.getloadavg()[0]:.2f}"
            )
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
