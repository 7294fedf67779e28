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
    """Every scalar series in a run folder's TensorBoard event files: tag -> [(step, value)]."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    return tmp_path / "logs"
