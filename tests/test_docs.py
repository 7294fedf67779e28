"""Docs that cannot rot: every shell command of README.md and docs/*.md, run in order as a newcomer would.

In a copy of the repository (its tracked files, as a fresh clone has them), each command of every
```bash block runs as written in one environment: the README's install line first (a fresh venv),
then the rest in that venv. lightsum commands get the tiny limits they do not set appended; ``tensorboard`` must serve
the runs before it is stopped. A non-zero exit fails the test with the command and its output.
Commands that need what this machine lacks are skipped, by name, in SKIPPED.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO

PAGES = [
    "README.md",
    "docs/configs.md",
    "docs/predict-and-report.md",
    "docs/resume.md",
    "docs/clusters.md",
    "docs/benchmarks.md",
    "docs/your-data.md",
]
SKIPPED = {  # command prefix -> why it cannot run here
    "sbatch ": "needs SLURM",
    "torchrun --nnodes 2": "needs two nodes with 4 GPUs each",
    "python -m pytest": "the test suite itself (.ci/run runs both tiers)",
    "python benchmarks/": "benchmarks take minutes; their figures are measured, not tested",
    "python -m lightsum sweep configs/strategies": "whole sweeps take minutes to hours; tests/test_sweep.py runs small ones",
}
TINY = [
    "--trainer.max_epochs=1",
    "--data.num_samples=4000",
    "--data.test_samples=1000",
    "--model.hidden_size=8",
    "--data.calibration_per_sum=20",
    "--data.boundary_per_sum=20",
    "--trainer.enable_progress_bar=false",
]
LIGHTSUM = re.compile(r"^python -m lightsum (fit|validate|test|predict)\b")


# Users' files: the file's size is the file's; only the epochs and the model shrink.
TINY_FILES = ["--trainer.max_epochs=1", "--model.hidden_size=8", "--trainer.enable_progress_bar=false"]


def tiny_for(command: str) -> list[str]:
    """The TINY limits a documented command does not set itself (a smoke run's sizes, a resume's epochs)."""
    limits = TINY_FILES if "configs/files.yaml" in command else TINY
    return [limit for limit in limits if f" {limit.split('=')[0]} " not in f"{command} ".replace("=", " ")]


def commands(page: Path) -> list[str]:
    """The shell commands of a page's ```bash blocks: continuation lines joined, comments dropped."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment (none of these hold a literal #)
            if line and not line.startswith("#"):
                found.append(re.sub(r"\s+", " ", line))
    return found


def test_every_page_has_commands_and_every_skip_is_used() -> None:
    every = [c for page in PAGES for c in commands(REPO / page)]
    assert all(commands(REPO / page) for page in ("README.md", "docs/clusters.md", "docs/predict-and-report.md"))
    assert all(any(c.startswith(prefix) for c in every) for prefix in SKIPPED), "a stale entry in SKIPPED"
    assert sum(1 for c in every if not c.startswith(tuple(SKIPPED))) >= 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_tensorboard(command: str, cwd: Path, env: dict) -> tuple[int, str]:
    """Start the documented tensorboard command, wait until it lists runs, stop it."""
    port = free_port()
    server = subprocess.Popen(
        ["bash", "-c", f"{command} --host 127.0.0.1 --port {port}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as response:
                    runs = response.read().decode()
                if "version_" in runs:
                    return 0, runs
            except OSError:
                pass
            time.sleep(0.5)
        return (
            1,
            f"tensorboard did not serve the runs: {server.stderr.read() if server.poll() is not None else 'timeout'}",
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_every_documented_command_runs(tmp_path: Path) -> None:
    work = tmp_path / "lightsum"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in filter(None, tracked.split("\0")):
        source, target = REPO / name, work / name
        if source.exists() or source.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    ran, skipped = [], []
    for page in PAGES:
        for command in commands(REPO / page):
            if command.startswith(tuple(SKIPPED)):
                skipped.append(command)
                continue
            venv = work / ".venv" / "bin"
            if venv.is_dir():  # after the install line, as a newcomer's activated shell
                env["PATH"] = f"{venv}{os.pathsep}{os.environ['PATH']}"
            if command.startswith("tensorboard "):
                code, output = serve_tensorboard(command, work, env)
            else:
                line = f"{command} {' '.join(tiny_for(command))}" if LIGHTSUM.match(command) else command
                proc = subprocess.run(
                    ["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=900
                )
                code, output = proc.returncode, proc.stdout[-2000:] + proc.stderr[-3000:]
            assert code == 0, f"{page}: `{command}` exited {code}:\n{output}"
            ran.append(command)
    assert any(c.startswith("python3 -m venv .venv") for c in ran)  # the install ran as written
    assert (work / "lightning_logs" / "report" / "report.md").is_file()
    print(f"ran {len(ran)} documented commands, skipped {len(skipped)}: {skipped}", file=sys.stderr)
