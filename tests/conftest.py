from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def tiny(root: Path, epochs: int = 2) -> list[str]:
    """CLI overrides that make any config run in seconds, writing under ``root``."""
    return [
        f"--trainer.logger.init_args.save_dir={root}",
        f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false",
        "--data.num_samples=600",
        "--data.test_samples=500",
        "--model.hidden_size=8",
    ]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a run folder's TensorBoard event files: tag -> [(step, value)] by step.

    Files are read one by one: a resumed run adds a second file, and two files written by one
    process in the same second sort by a counter suffix as text ('.10' before '.9'), which would
    make TensorBoard's reader see steps going backwards and purge them.
    """
    series: dict[str, list[tuple[int, float]]] = {}
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0}, purge_orphaned_data=False)
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(points) for tag, points in series.items()}


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    return tmp_path / "logs"
