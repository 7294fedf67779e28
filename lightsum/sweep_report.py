"""A sweep's table: per strategy, the mean and spread across seeds of its trials' test metrics and fit
time, as ``sweep.md``, ``sweep.csv`` and ``sweep.png`` in the sweep folder (``lightsum report SWEEP``)."""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any

from lightsum.atomic import AtomicFile
from lightsum.errors import note
from lightsum.sweep import finished, read_manifest, read_result, trials_of

# Columns: test metrics of each trial's best checkpoint (boundary_accuracy: digit sums only, on the
# test's own boundary set), natural test sequences wrong, and the fit's training seconds.
COLUMNS = (
    "min_recall",
    "recall_0",
    "recall_1",
    "average_precision_minority",
    "boundary_accuracy",
    "missed",
    "fit_seconds",
)
WHOLE = ("missed", "fit_seconds")  # printed without decimals
FIGURE_METRICS = ("min_recall", "boundary_accuracy", "average_precision_minority")


def trial_values(result: dict[str, Any]) -> dict[str, float]:
    """A finished trial's row: its test metrics, ``missed`` (both classes) and ``fit_seconds``."""
    test = result["test"]
    values = {k: float(test[k]) for k in COLUMNS if k in test}
    if "missed_0" in test and "missed_1" in test:
        values["missed"] = float(test["missed_0"]) + float(test["missed_1"])
    if result.get("fit_seconds") is not None:
        values["fit_seconds"] = float(result["fit_seconds"])
    return values


def sweep_rows(out: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Per strategy in the grid's order: its name, seeds finished, and per column the values of
    its finished trials; and the names of the trials not finished."""
    rows: dict[str, dict[str, Any]] = {}
    missing = []
    for trial in trials_of(read_manifest(out)):
        row = rows.setdefault(trial.strategy, {"strategy": trial.strategy, "seeds": [], "values": {}})
        result = read_result(trial.folder(out))
        if not finished(result):
            missing.append(trial.name)
            continue
        row["seeds"].append(trial.seed)
        for key, value in trial_values(result).items():
            row["values"].setdefault(key, []).append(value)
    return [row for row in rows.values() if row["seeds"]], missing


def mean_spread(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value: no spread to tell)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    return [c for c in COLUMNS if any(c in row["values"] for row in rows)]


def markdown(rows: list[dict[str, Any]]) -> str:
    columns = columns_of(rows)
    lines = [
        "| strategy | seeds | " + " | ".join(columns) + " |",
        "|" + " --- |" * (len(columns) + 2),
    ]
    for row in rows:
        cells = []
        for column in columns:
            values = row["values"].get(column)
            if not values:
                cells.append("-")
                continue
            mean, spread = mean_spread(values)
            digits = 0 if column in WHOLE else 4
            cells.append(f"{mean:.{digits}f}" + ("" if spread is None else f" ± {spread:.{digits}f}"))
        lines.append(f"| {row['strategy']} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_text(rows: list[dict[str, Any]]) -> str:
    columns = columns_of(rows)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["strategy", "seeds", *(f"{c}_{stat}" for c in columns for stat in ("mean", "std"))])
    for row in rows:
        cells: list[Any] = [row["strategy"], len(row["seeds"])]
        for column in columns:
            values = row["values"].get(column)
            mean, spread = mean_spread(values) if values else ("", "")
            cells += [mean, "" if spread is None else spread]
        writer.writerow(cells)
    return text.getvalue()


def figure(rows: list[dict[str, Any]], title: str) -> Any:
    """Per metric a panel: each strategy a row, each seed a dot, the mean a bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [m for m in FIGURE_METRICS if any(m in row["values"] for row in rows)]
    fig = Figure(figsize=(4.2 * len(metrics) + 1.5, 0.45 * len(rows) + 1.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    names = [row["strategy"] for row in rows]
    for ax, metric in zip(axes, metrics):
        for y, row in enumerate(rows):
            values = row["values"].get(metric, [])
            ax.plot(values, [y] * len(values), "o", color="tab:blue", alpha=0.6, markersize=5)
            if values:
                ax.plot([statistics.mean(values)] * 2, [y - 0.3, y + 0.3], color="black", linewidth=2)
        ax.set_title(f"test/{metric}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def sweep_report(out: Path, plots: bool = True) -> str:
    """Write the sweep's table (``sweep.md``, ``sweep.csv``) and figure (``sweep.png``) into ``out``;
    print and return the Markdown table. Unfinished trials are named in a note.

    Raises:
        ValueError: no trial of the sweep has finished.
    """
    rows, missing = sweep_rows(out)
    if not rows:
        raise ValueError(f"report: no trial of the sweep in {out} has finished (no trial.json with test metrics)")
    if missing:
        note(f"report: {len(missing)} trial(s) not finished, left out of the table: {', '.join(missing)}")
    table = markdown(rows)
    footnote = (
        "Mean ± standard deviation across seeds of each trial's test metrics (its best checkpoint) and "
        "fit time (training seconds, as the event files count them)."
    )
    with AtomicFile(out / "sweep.md", "w") as md:
        md.write(f"{table}\n\n{footnote}\n")
    with AtomicFile(out / "sweep.csv", "w") as file:
        file.write(csv_text(rows))
    if plots and any(m in row["values"] for row in rows for m in FIGURE_METRICS):
        with AtomicFile(out / "sweep.png") as png:
            figure(rows, f"{out.name}: test metrics per seed (dots) and their mean (bars)").savefig(png, format="png")
    print(table)
    print(f"\nlightsum: wrote {out / 'sweep.md'}, {out / 'sweep.csv'}" + (f", {out / 'sweep.png'}" if plots else ""))
    return table
