"""Peak memory and wall time of ``lightsum predict`` on large input files, CSV and ``.npy``.

Run from the repository root: ``python benchmarks/predict_memory.py [--rows 1000000 10000000]``.

In a temporary folder it trains a tiny model (hidden size 8, one short epoch: the figures are of
the data path, not of the model), writes N natural sequences drawn by lightsum's own synthesis
(``data.seed`` 0's test stream) as a CSV of digit strings (31 bytes a row) and as a uint8 ``.npy``
(30 bytes a row), and runs ``python -m lightsum predict ... --return_predictions false`` on each as
a subprocess. Each predict runs under its own intermediate Python process, whose
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is then that one command's peak resident memory (the
counter keeps the largest child's, so one child per measurement). The wall time is the whole
command's, start-up (about 4 s of imports) included.

``--python-path DIR`` runs another copy of lightsum (``DIR`` first on ``PYTHONPATH``), e.g. an
earlier commit unpacked with ``git archive``. Arguments after ``--`` go to every predict command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEQ_LEN = 30
_WRITE_ROWS = 1_000_000  # rows converted to text at a time: bounded memory in this process too
# Runs a command and prints its peak RSS: the intermediate process has that one child only.
_MEASURE = (
    "import json, resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(json.dumps({'rc': code, 'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
)


def digits(rows: int) -> np.ndarray:
    """``rows`` natural sequences from lightsum's synthesis, as uint8 (N, 30)."""
    from lightsum.data.digit_sums import natural_digits, stream

    return natural_digits(rows, SEQ_LEN, stream(0, "test")).numpy()


def write_csv(path: Path, array: np.ndarray) -> None:
    """One string of 30 digits per line, written a million rows at a time."""
    with open(path, "wb") as out:
        for start in range(0, len(array), _WRITE_ROWS):
            chunk = array[start : start + _WRITE_ROWS] + ord("0")
            lines = np.hstack([chunk, np.full((len(chunk), 1), ord("\n"), np.uint8)])
            out.write(lines.tobytes())


def lightsum(*args: str, env: dict[str, str]) -> dict:
    """``python -m lightsum ARGS`` under its own measuring process: exit code, peak RSS, wall time."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, sys.executable, "-m", "lightsum", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if out.returncode != 0 or not out.stdout.strip():
        raise SystemExit(f"lightsum {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"lightsum {' '.join(args)} exited {result['rc']}:\n{out.stderr[-3000:]}")
    return {"seconds": seconds, "peak_bytes": result["maxrss_kb"] * 1024}


def tiny_checkpoint(folder: Path, env: dict[str, str]) -> Path:
    """A model trained just enough to load: one epoch of 2,000 sequences, hidden size 8."""
    lightsum(
        "fit",
        f"--trainer.logger.init_args.save_dir={folder}",
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        "--data.num_samples=2000",
        "--data.test_samples=1000",
        "--data.calibration_per_sum=20",
        "--data.boundary_per_sum=20",
        "--model.hidden_size=8",
        env=env,
    )
    (checkpoint,) = folder.glob("*/version_0/checkpoints/last.ckpt")
    return checkpoint


def count_lines(path: Path) -> int:
    with open(path, "rb") as file:
        return sum(block.count(b"\n") for block in iter(lambda: file.read(2**24), b""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--formats", nargs="+", choices=("csv", "npy"), default=["csv", "npy"])
    parser.add_argument("--python-path", help="a lightsum source tree to run instead of the installed one")
    parser.add_argument("--tmp", help="folder for the temporary files (default: the system's)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.python_path:
        source = str(Path(args.python_path).resolve())
        sys.path.insert(0, source)  # this process draws the sequences with that copy too
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = Path(tmp)
        checkpoint = tiny_checkpoint(folder / "logs", env)
        print(f"{'rows':>11} {'format':<6} {'input MB':>9} {'peak RSS MB':>12} {'wall s':>7} {'us/row':>7}", flush=True)
        for rows in args.rows:
            array = digits(rows)
            for form in args.formats:
                source = folder / f"sequences.{form}"
                write_csv(source, array) if form == "csv" else np.save(source, array)
                out = folder / "predictions.csv"
                figures = lightsum(
                    "predict",
                    f"--ckpt_path={checkpoint}",
                    f"--data.predict_path={source}",
                    f"--predictions.path={out}",
                    "--trainer.enable_progress_bar=false",
                    "--return_predictions=false",
                    *extra,
                    env=env,
                )
                if count_lines(out) != rows + 1:  # the header and one line per sequence
                    raise SystemExit(f"{out} does not hold {rows} predictions")
                print(
                    f"{rows:>11,} {form:<6} {source.stat().st_size / 1e6:>9.0f} {figures['peak_bytes'] / 2**20:>12.0f} "
                    f"{figures['seconds']:>7.1f} {figures['seconds'] / rows * 1e6:>7.2f}",
                    flush=True,
                )
                source.unlink()
                out.unlink()
            del array


if __name__ == "__main__":
    main()
