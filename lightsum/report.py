"""``python -m lightsum report RUN_DIR ...``: a figure per run and a comparison table, from TensorBoard files."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from lightsum.errors import OneLineParserErrors
from lightsum.events import read_scalars

# Columns of the comparison table: validation metrics at the best epoch (what best-*.ckpt holds).
TABLE_METRICS = ("recall_0", "recall_1", "min_recall", "balanced_accuracy", "auroc")


@dataclass
class Run:
    """What a run folder's event files and config.yaml say about one training run."""

    path: Path
    name: str
    strategy: str
    series: dict[str, list[tuple[int, float]]]  # tag -> [(step, value)] sorted by step
    seconds: float

    def by_epoch(self, tag: str) -> list[tuple[int, float]]:
        """(epoch, value) of an epoch-level tag; epochs counted from 0, as in checkpoint names."""
        epoch_at = dict(self.series.get("epoch", []))
        return [(int(epoch_at.get(step, i)), value) for i, (step, value) in enumerate(self.series.get(tag, []))]

    @property
    def best(self) -> dict[str, float]:
        """Validation metrics of the epoch with the highest val/min_recall (the first of ties, as
        ModelCheckpoint keeps), with ``epoch`` and ``epochs`` (validation epochs run)."""
        scores = self.by_epoch("val/min_recall")
        if not scores:
            return {"epochs": 0}
        i = max(range(len(scores)), key=lambda k: (scores[k][1], -k))
        row = {m: self.by_epoch(f"val/{m}")[i][1] for m in TABLE_METRICS if len(self.by_epoch(f"val/{m}")) > i}
        return {**row, "epoch": scores[i][0], "epochs": len(scores)}


def find_runs(paths: list[str]) -> list[Path]:
    """Run folders (holding event files) named by, or found under, each path; each folder once."""
    runs: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise ValueError(f"report: not a directory: {path}")
        found = sorted({p.parent for p in path.rglob("events.out.tfevents.*")})
        if not found:
            raise ValueError(f"report: no TensorBoard event files under {path}")
        for run in found:
            if run.resolve() not in seen:
                seen.add(run.resolve())
                runs.append(run)
    return runs


def run_names(paths: list[Path]) -> list[str]:
    """A unique, readable name per run folder: the last two parts of its absolute path
    (``default/version_0``), or as many more as it takes to tell it from every other folder given
    (``a/logs/default/version_0`` and ``b/logs/default/version_0``)."""
    parts = [p.resolve().parts[1:] or (p.resolve().anchor,) for p in paths]
    names = []
    for i, mine in enumerate(parts):
        k = min(2, len(mine))
        while k < len(mine) and any(other[-k:] == mine[-k:] for j, other in enumerate(parts) if j != i):
            k += 1
        names.append("/".join(mine[-k:]))
    return names


def figure_files(names: list[str]) -> list[str]:
    """A PNG file name per run name, unique even where two names differ only in characters a file
    name cannot hold or in case (``default/version_0`` -> ``default_version_0.png``)."""
    files, taken = [], set()
    for name in names:
        stem = re.sub(r"[^\w.-]+", "_", name).strip("._") or "run"
        candidate, n = stem, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}-{n}"
        taken.add(candidate.lower())
        files.append(f"{candidate}.png")
    return files


def read_run(path: Path) -> Run:
    """A run's scalar series and training seconds (``lightsum.events.read_scalars``: each step of a
    resumed or requeued run counted once) and its strategy, named ``<parent>/<folder>``
    (``report_main`` renames runs that would collide)."""
    scalars = read_scalars(path)
    config_file = path / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    return Run(path, f"{path.parent.name}/{path.name}", strategy_of(config or {}), scalars.series, scalars.seconds)


def strategy_of(config: dict) -> str:
    """The imbalance strategy a resolved config.yaml describes, e.g. ``oversample 1.0, threshold tuned``."""
    data, model = config.get("data") or {}, config.get("model") or {}
    if not data:
        return "?"
    if data.get("train_distribution") == "balanced":
        what = f"balanced {data.get('sampling_ratio')}"
    elif data.get("sampling", "none") != "none":
        what = f"{data['sampling']} {data.get('sampling_ratio')}"
    elif model.get("pos_weight") is not None:
        what = f"pos_weight {model['pos_weight']}"
    else:
        what = "none"
    return f"{what}, threshold {model.get('decision_threshold', 0.5)}"


def table(runs: list[Run]) -> str:
    """The markdown comparison table of ``runs``."""
    head = ["run", "strategy", *TABLE_METRICS, "best epoch", "epochs", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for run in runs:
        best = run.best
        cells = [run.name, run.strategy]
        cells += [f"{best[m]:.4f}" if m in best else "-" for m in TABLE_METRICS]
        cells += [str(best.get("epoch", "-")), str(best["epochs"]), f"{run.seconds:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(run: Run, out: Path) -> None:
    """The original notebook's figure for one run: loss per epoch (train dashed, validation solid)
    on the left axis, validation accuracy and per-class recall on a twin axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for tag, style, label in (("train/loss_epoch", "--", "train loss"), ("val/loss", "-", "validation loss")):
        points = run.by_epoch(tag)
        if points:
            ax.plot(*zip(*points), style, color="tab:red", label=label, marker="." if len(points) < 30 else None)
    ax.set(xlabel="epoch", ylabel="binary cross-entropy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yscale("log")  # losses of a good run span decades
    twin = ax.twinx()
    for tag, color, label in (("val/accuracy", "black", "accuracy"),
                              ("val/recall_0", "tab:blue", "recall class 0 (minority)"),
                              ("val/recall_1", "tab:green", "recall class 1")):
        points = run.by_epoch(tag)
        if points:
            twin.plot(*zip(*points), "-", color=color, label=label, alpha=0.85)
    twin.set(ylabel="validation accuracy / recall", ylim=(-0.02, 1.02))
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    twin.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
    ax.set_title(f"{run.name}: {run.strategy}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)


class ReportParser(OneLineParserErrors, argparse.ArgumentParser):
    error_context = "report: "
    help_hint = "lightsum report --help"


def report_main(argv: list[str]) -> None:
    """Parse ``report`` arguments, write the figures and the table, print the table.

    Run folders without ``val/min_recall`` (from ``test`` or ``predict``, or a fit stopped before
    its first validation) are skipped with a note on stderr.
    """
    parser = ReportParser(
        prog="lightsum report",
        description="Figures and a comparison table of lightsum runs, read from their TensorBoard event files.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run folders (lightning_logs/<name>/version_<n>) or folders holding them")
    parser.add_argument("--out", default="lightning_logs/report",
                        help="output folder for report.md and one PNG per run, named after the run "
                             "(default/version_0 -> default_version_0.png) (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="write only the table (no matplotlib needed)")
    args = parser.parse_args(argv)
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("report draws figures with matplotlib, which is not installed: "
                             "pip install 'lightsum[report]' (or pass --no-plots for the table only)") from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"report: --out {out} is a file, not a folder")
    runs = []
    for path in find_runs(args.runs):
        run = read_run(path)
        if "val/min_recall" in run.series:
            runs.append(run)
        else:
            print(f"lightsum: note: report skips {path}: no val/min_recall in its event files "
                  "(a test or predict run, or a fit stopped before its first validation)", file=sys.stderr)
    if not runs:
        raise ValueError(f"report: no run with val/min_recall in {', '.join(args.runs)}")
    for run, name in zip(runs, run_names([run.path for run in runs])):
        run.name = name
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"report: cannot create --out {out} ({err.strerror or err})") from None
    if not args.no_plots:
        for run, file in zip(runs, figure_files([run.name for run in runs])):
            plot(run, out / file)
    text = table(runs)
    note = ("Validation metrics at the epoch with the best val/min_recall (the best checkpoint); "
            "seconds: wall time from each event file's creation to its last scalar.")
    (out / "report.md").write_text(f"{text}\n\n{note}\n")
    print(text)
    print(f"\nlightsum: wrote {out / 'report.md'}" + ("" if args.no_plots else f" and {len(runs)} figure(s)"))
