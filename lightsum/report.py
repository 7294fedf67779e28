"""``python -m lightsum report RUN_DIR ...``: a figure per run and a comparison table, from TensorBoard files."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightsum.atomic import AtomicFile
from lightsum.errors import OneLineParserErrors, note
from lightsum.events import read_scalars

# Columns of the comparison table: validation metrics at the best epoch (what best-*.ckpt holds).
# The miss counts tell 0.997 from 0.9995; class 1's AP is ~1 at 98.8% prevalence, so the minority's.
# boundary_accuracy: the fixed exact-sampled set of sums threshold-5 .. threshold+4, where errors live.
TABLE_METRICS = ("recall_0", "recall_1", "min_recall", "missed_0", "missed_1", "boundary_accuracy", "average_precision_0", "auroc")
COUNTS = ("missed_0", "missed_1", "sequences")


@dataclass
class Run:
    """What a run folder's event files and config.yaml say about one training run."""

    path: Path
    name: str
    strategy: str
    series: dict[str, list[tuple[int, float]]]  # tag -> [(step, value)] sorted by step
    seconds: float
    monitor: str = "val/min_recall"  # what chose its best checkpoint (config.yaml's best_checkpoint.monitor)
    mode: str = "max"  # and whether higher or lower was better (best_checkpoint.mode)

    def by_epoch(self, tag: str) -> list[tuple[int, float]]:
        """(epoch, value) of an epoch-level tag; epochs counted from 0, as in checkpoint names."""
        epoch_at = dict(self.series.get("epoch", []))
        return [(int(epoch_at.get(step, i)), value) for i, (step, value) in enumerate(self.series.get(tag, []))]

    @property
    def best(self) -> dict[str, float]:
        """Every validation metric (``val/`` dropped) at the epoch with the highest value of the
        run's checkpoint monitor (the first of ties, as ModelCheckpoint keeps), with ``epoch`` and
        ``epochs`` (validation epochs run)."""
        scores = self.series.get(self.monitor) or self.series.get("val/min_recall", [])
        if not scores:
            return {"epochs": 0}
        sign = -1 if self.mode == "min" else 1
        i = max(range(len(scores)), key=lambda k: (sign * scores[k][1], -k))
        step = scores[i][0]
        row = {tag[4:]: dict(points)[step] for tag, points in self.series.items()
               if tag.startswith("val/") and step in dict(points)}
        return {**row, "epoch": self.by_epoch(self.monitor if self.monitor in self.series else "val/min_recall")[i][0],
                "epochs": len(scores)}


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
    config = config or {}
    best = config.get("best_checkpoint") or {}
    return Run(path, f"{path.parent.name}/{path.name}", strategy_of(config), scalars.series, scalars.seconds,
               best.get("monitor") or "val/min_recall", best.get("mode") or "max")


def strategy_of(config: dict) -> str:
    """The imbalance strategy a resolved config.yaml describes, e.g. ``oversample 1.0, threshold tuned``
    or ``boundary 0.5 + oversample 1.0, focal, threshold tuned``."""
    data, model = config.get("data") or {}, config.get("model") or {}
    if not data:
        return "?"
    parts = []
    if data.get("train_distribution") == "balanced":
        parts.append(f"balanced {data.get('sampling_ratio')}")
    if data.get("train_distribution") == "boundary":
        parts.append(f"boundary {data.get('boundary_share')}")
    if data.get("sampling", "none") != "none":
        parts.append(f"{data['sampling']} {data.get('sampling_ratio')}")
    what = " + ".join(parts) or "none"
    if model.get("pos_weight") is not None:
        what += f", pos_weight {model['pos_weight']}"
    if model.get("loss", "bce") != "bce":
        what += f", {model['loss']}"
    return f"{what}, threshold {model.get('decision_threshold', 0.5)}"


def table(runs: list[Run]) -> str:
    """The markdown comparison table of ``runs``."""
    head = ["run", "strategy", *TABLE_METRICS, "best epoch", "epochs", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for run in runs:
        best = run.best
        cells = [run.name, run.strategy]
        cells += ["-" if m not in best else f"{best[m]:.0f}" if m in COUNTS else f"{best[m]:.4f}" for m in TABLE_METRICS]
        cells += [str(best.get("epoch", "-")), str(best["epochs"]), f"{run.seconds:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(run: Run, out: Path) -> None:
    """One run's figure: loss per epoch (train dashed, validation solid) beside the validation
    sequences of each class classified wrong, both on log axes, where a good run's differences
    live (recalls of 0.997 and 0.9995 both sit at 1.0 on a 0-1 axis; 28 and 4 misses do not)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    loss, missed = fig.subplots(1, 2)
    for tag, style, label in (("train/loss_epoch", "--", "train"), ("val/loss", "-", "validation")):
        points = run.by_epoch(tag)
        if points:
            loss.plot(*zip(*points), style, color="tab:red", label=label, marker="." if len(points) < 30 else None)
    loss.set(xlabel="epoch", ylabel="binary cross-entropy", yscale="log", title="loss")
    sizes = run.best
    for cls, color, name in ((0, "tab:blue", "class 0 (minority)"), (1, "tab:green", "class 1")):
        points = run.by_epoch(f"val/missed_{cls}")
        if not points:  # a run logged before miss counts: 1 - recall shows the same shape
            points = [(e, 1 - v) for e, v in run.by_epoch(f"val/recall_{cls}")]
        if points:
            missed.plot(*zip(*points), "-", color=color, label=name, marker="." if len(points) < 30 else None)
    of = f" (of {sizes['sequences']:.0f})" if "sequences" in sizes else ""
    ylabel = f"sequences missed{of}" if "val/missed_0" in run.series else "1 - recall"
    # symlog: linear below 1, so an epoch without a miss still shows (at 0).
    missed.set(xlabel="epoch", ylabel=ylabel, yscale="symlog", ylim=(0, None), title="validation errors per class")
    for ax in (loss, missed):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.suptitle(f"{run.name}: {run.strategy}", fontsize=10)
    fig.tight_layout()
    with AtomicFile(out) as png:  # a full disk leaves the previous figure, not half of a new one
        fig.savefig(png, format="png")


def fit_summary(run_dir: Path, best: Any, configs: list[str]) -> str:
    """What ``fit`` prints at its end: the run folder, the best checkpoint with its validation
    figures, last.ckpt, and the commands to run next.

    Args:
        run_dir: the run folder.
        best: the ``ModelCheckpoint`` that keeps the best checkpoint (``best_model_path``).
        configs: the ``--config FILE`` arguments of the fit, repeated in the next commands.
    """
    run = read_run(run_dir)
    values = run.best
    last = run_dir / "checkpoints" / "last.ckpt"
    lines = [f"lightsum: fit finished: {run_dir} ({values['epochs']} validated epochs, {run.seconds:.0f} s of training)"]
    if best.best_model_path:
        lines += [f"  best checkpoint  {best.best_model_path}  (epoch {values.get('epoch')}, by {best.monitor})",
                  "    val " + "  ".join(f"{m} {values[m]:.5f}" for m in ("recall_0", "recall_1", "min_recall", "boundary_accuracy")
                                        if m in values)
                  + (f"  missed {values['missed_0']:.0f} + {values['missed_1']:.0f} of {values['sequences']:.0f}"
                     if "missed_0" in values else "")
                  + (f"  decision threshold {values['decision_threshold']:.4g}" if "decision_threshold" in values else "")]
    if last.is_file():
        lines.append(f"  last checkpoint  {last}  (continue training: the same command with --ckpt_path last)")
    lines += ["next:",
              "  " + " ".join(["python -m lightsum test", *configs, "--ckpt_path", best.best_model_path or str(last)]),
              f"  python -m lightsum report {run_dir}",
              f"  tensorboard --logdir {run_dir.parent.parent}"]
    return "\n".join(lines)


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
            note(f"note: report skips {path}: no val/min_recall in its event files "
                 "(a test or predict run, or a fit stopped before its first validation)")
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
    footnote = ("Validation metrics at the epoch of each run's best checkpoint (by its best_checkpoint.monitor, "
                "val/min_recall where config.yaml does not say); "
            "seconds: wall time from each event file's creation to its last scalar.")
    with AtomicFile(out / "report.md", "w") as md:
        md.write(f"{text}\n\n{footnote}\n")
    print(text)
    print(f"\nlightsum: wrote {out / 'report.md'}" + ("" if args.no_plots else f" and {len(runs)} figure(s)"))
