"""Reading a run folder's TensorBoard event files: every scalar series, each step counted once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# events.out.tfevents.<creation time>.<host>.<pid>.<counter>[suffix]; the host may hold dots.
_EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.(.+)\.(\d+)\.(\d+)")


@dataclass
class RunScalars:
    """What a run folder's event files hold: ``series`` maps tag -> [(step, value)] sorted by
    step; ``seconds`` adds up the span of each file that logged training (``train/*``), from its
    creation to its last scalar."""

    series: dict[str, list[tuple[int, float]]]
    seconds: float


def read_scalars(run_dir: str | Path) -> RunScalars:
    """Every scalar series of a run folder.

    A resumed or requeued run adds an event file to its folder and re-logs the steps after the
    checkpoint it resumed from. The files are read one by one, oldest first, and each file that
    trained replaces, tag by tag, every point the older files logged from its own first step of
    that tag on: the re-logged steps count once, with the values of the attempt that continued,
    and a tail an abandoned attempt logged past them is dropped. A file of ``validate`` or
    ``test`` (no ``train/*`` tag) only adds its points. (TensorBoard's own reader, given the
    folder, reads files in name order, where ``...123.10`` sorts before ``...123.9``, and purges
    steps it sees going backwards.) A pause between a stop and a resume does not count in ``seconds``.
    """
    series: dict[str, dict[int, float]] = {}
    seconds = 0.0
    for acc in _event_files_oldest_first(Path(run_dir)):
        tags = [tag for tag in acc.Tags()["scalars"] if acc.Scalars(tag)]
        trains = any(tag.startswith("train/") for tag in tags)
        for tag in tags:
            points = acc.Scalars(tag)
            first = min(e.step for e in points) if trains else float("inf")
            kept = {step: value for step, value in series.get(tag, {}).items() if step < first}
            kept.update((e.step, e.value) for e in points)  # in file order: a step's last value wins
            series[tag] = kept
        if trains:
            seconds += max(e.wall_time for tag in tags for e in acc.Scalars(tag)) - acc.FirstEventTimestamp()
    return RunScalars({tag: sorted(points.items()) for tag, points in series.items()}, seconds)


def _event_files_oldest_first(path: Path) -> list[EventAccumulator]:
    """The loaded event files of a run folder, in the order they were created: by the creation
    time in their names, then their first event's time, then the writer's counter (a requeued job
    on another host must not sort before its first attempt)."""
    loaded = []
    for events in path.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0}, purge_orphaned_data=False)
        acc.Reload()
        try:
            first = acc.FirstEventTimestamp()
        except ValueError:
            continue  # no event at all (a writer killed before its first flush): nothing to read
        match = _EVENT_FILE.match(events.name)
        created, counter = (int(match[1]), int(match[4])) if match else (int(first), 0)
        loaded.append(((created, first, counter, events.name), acc))
    return [acc for _, acc in sorted(loaded, key=lambda item: item[0])]
