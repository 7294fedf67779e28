"""``python -m lightsum report RUN_DIR ...``: a figure per run and a comparison table, from TensorBoard files."""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightsum.atomic import AtomicFile
from lightsum.checkpoints import nothing_left_to_train, read_checkpoint
from lightsum.errors import DamagedFile, OneLineParserErrors, note
from lightsum.events import file_kind, read_scalars
from lightsum.folders import check_writable

# Columns of the comparison table: validation metrics at the best epoch (what best-*.ckpt holds).
# The miss counts tell 0.997 from 0.9995; class 1's AP is ~1 at 98.8% prevalence, so the minority's.
# boundary_accuracy: the fixed exact-sampled set of sums threshold-5 .. threshold+4, where errors live.
TABLE_METRICS = (
    "recall_0",
    "recall_1",
    "min_recall",
    "missed_0",
    "missed_1",
    "boundary_accuracy",
    "average_precision_minority",
    "auroc",
)
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
    config: dict = field(default_factory=dict)  # its resolved config.yaml; {} where it has none
    classes: tuple[str, str] | None = None  # the names of class 0 and 1 of a model trained on files

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
        row = {
            tag[4:]: dict(points)[step]
            for tag, points in self.series.items()
            if tag.startswith("val/") and step in dict(points)
        }
        return {
            **row,
            "epoch": self.by_epoch(self.monitor if self.monitor in self.series else "val/min_recall")[i][0],
            "epochs": len(scores),
        }


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
    config = read_config(path / "config.yaml")
    best = config.get("best_checkpoint") or {}
    classes = read_classes(path / "hparams.yaml")
    return Run(
        path,
        f"{path.parent.name}/{path.name}",
        strategy_of(config),
        scalars.series,
        scalars.seconds,
        str(best.get("monitor") or "val/min_recall"),
        str(best.get("mode") or "max"),
        config,
        classes,
    )


def read_config(path: Path) -> dict:
    """A run's resolved ``config.yaml``; ``{}`` where the run has none (one not trained by lightsum).

    Raises:
        DamagedFile: it is not a regular file, cannot be read, is not UTF-8 text or not YAML, or
            its sections (``data``, ``model``, ``best_checkpoint``) are not mappings.
    """
    kind = file_kind(path)
    if kind == "missing":
        return {}
    if kind != "file":
        raise DamagedFile(path, f"{kind}, not a config file")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DamagedFile(path, f"cannot be read: {err.strerror or err}") from None
    except (UnicodeDecodeError, yaml.reader.ReaderError):
        raise DamagedFile(path, "not a config file: binary data, not YAML text") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise DamagedFile(path, f"not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    config = {} if config is None else config
    sections = ("data", "model", "best_checkpoint")
    if not isinstance(config, dict) or not all(isinstance(config.get(k) or {}, dict) for k in sections):
        raise DamagedFile(path, f"not a lightsum config: a YAML mapping whose {', '.join(sections)} are mappings")
    data = config.get("data") or {}
    if isinstance(data.get("init_args"), dict):  # the data module is a class_path + init_args group
        config["data"] = {**data["init_args"], "class_path": data.get("class_path")}
    return config


def read_classes(path: Path) -> tuple[str, str] | None:
    """The classes' names of a model trained on files, from the run's ``hparams.yaml`` (the model's
    schema, which the TensorBoard logger writes there); None for digit sums or where it cannot be read
    (the names only label the output)."""
    if file_kind(path) != "file":
        return None
    try:
        hparams = yaml.safe_load(path.read_text(encoding="utf-8"))
        classes = hparams["schema"]["classes"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return None
    if not isinstance(classes, list) or len(classes) != 2 or [str(c) for c in classes] == ["0", "1"]:
        return None  # labels 0 and 1 need no names
    return str(classes[0]), str(classes[1])


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


def fraction(value: float, digits: int = 4) -> str:
    """A recall, accuracy or other share with ``digits`` decimals, or as many more as it takes for a
    value below 1 not to print as 1: one miss in 39,530 is 0.99997, not 1.0000."""
    text = f"{value:.{digits}f}"
    while value < 1 and float(text) >= 1 and digits < 17:
        digits += 1
        text = f"{value:.{digits}f}"
    return text


def table(runs: list[Run]) -> str:
    """The markdown comparison table of ``runs``."""
    head = ["run", "strategy", *TABLE_METRICS, "best epoch", "epochs", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for run in runs:
        best = run.best
        cells = [run.name, run.strategy]
        cells += [
            "-" if m not in best else f"{best[m]:.0f}" if m in COUNTS else fraction(best[m]) for m in TABLE_METRICS
        ]
        cells += [str(best.get("epoch", "-")), str(best["epochs"]), f"{run.seconds:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- the figure --------------------------------------------------------------------------------

# Half a float32 step below 1: the error of a recall as the event files store it.
RECALL_ROUNDING = 2.0**-25


def class_sizes(run: Run) -> tuple[int, int] | None:
    """The validation sequences of class 0 and of class 1, from the run's own metrics: the event
    files hold the total (``val/sequences``) and each class's recall and misses, and a class with m
    misses at recall r holds m / (1 - r). A float32 recall makes that exact for a class with a
    large share missed (the minority), not for one with a tiny share (one miss in 39,530), so the
    size comes from the most exact epoch and class, and the other class is the rest of the total.
    None where no epoch tells a size to the sequence (nothing missed, or no miss counts logged)."""
    totals = dict(run.series.get("val/sequences", []))
    found = None  # (uncertainty in sequences, class, size, total)
    for cls in (0, 1):
        recalls = dict(run.series.get(f"val/recall_{cls}", []))
        for step, missed in run.series.get(f"val/missed_{cls}", []):
            share = 1 - recalls.get(step, 1.0)
            if missed <= 0 or share <= 0 or step not in totals:
                continue
            uncertainty = missed * RECALL_ROUNDING / share**2
            if found is None or uncertainty < found[0]:
                found = (uncertainty, cls, round(missed / share), round(totals[step]))
    if found is None or found[0] >= 0.5:
        return None
    _, cls, size, total = found
    return (size, total - size) if cls == 0 else (total - size, size)


def class_names(sizes: tuple[int, int] | None, classes: tuple[str, str] | None = None) -> tuple[str, str]:
    """``minority (class 0)`` and ``majority (class 1)``, as the class sizes say, else ``class 0``,
    ``class 1``; with the classes' own names where a model trained on files has them: ``minority
    'fraud' (class 1)``."""
    named = [f"{classes[c]!r} (class {c})" if classes else f"(class {c})" for c in (0, 1)]
    if sizes is None or sizes[0] == sizes[1]:
        return tuple(n if classes else f"class {c}" for c, n in enumerate(named))
    minority = 0 if sizes[0] < sizes[1] else 1
    return tuple(f"{'minority' if c == minority else 'majority'} {named[c]}" for c in (0, 1))


def is_number(value: Any) -> bool:
    """A config value report can compute with (a hand-edited config.yaml may hold anything)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def share_words(share: Any) -> str:
    """``half``, ``all``, or ``30% of``: how much of the training data, in words."""
    if not is_number(share):
        return f"{share} of"
    return {0.5: "half", 1.0: "all"}.get(float(share), f"{float(share):.0%} of")


def ratio_words(ratio: Any) -> str:
    """A minority/majority ratio as people write it: 1.0 -> ``1:1``, 0.25 -> ``1:4``, 0.3 -> ``0.3:1``."""
    if not is_number(ratio) or ratio <= 0:
        return str(ratio)
    inverse = 1 / ratio
    return f"1:{inverse:.0f}" if abs(inverse - round(inverse)) < 1e-9 else f"{ratio:g}:1"


def boundary_sums(data: dict) -> str:
    """The sums the boundary rows are drawn from (``85-114`` for the class defaults), as the data module clips them."""
    threshold, window, seq_len = (
        data.get(k, d) for k, d in (("threshold", 100), ("boundary_window", 15), ("seq_len", 30))
    )
    if not all(is_number(v) for v in (threshold, window, seq_len)):
        return f"within {window} of {threshold}"
    return f"{max(threshold - window, 0)}-{min(threshold + window - 1, 9 * seq_len)}"


def training_data_words(data: dict) -> str:
    """The training split as drawn and served, in words: ``natural training data``, ``half the
    training data with sums near 100 (85-114)``, ``minority oversampled to 1:1``."""
    distribution = data.get("train_distribution", "natural")
    if distribution == "boundary":
        what = (
            f"{share_words(data.get('boundary_share', 0.5))} the training data with sums near "
            f"{data.get('threshold', 100)} ({boundary_sums(data)})"
        )
    elif distribution == "balanced":
        what = f"training data drawn class-balanced ({ratio_words(data.get('sampling_ratio', 1.0))} minority:majority)"
    else:
        what = "natural training data"
    sampling, ratio = data.get("sampling", "none"), ratio_words(data.get("sampling_ratio", 1.0))
    resampled = {
        "oversample": f"minority oversampled to {ratio}",
        "undersample": f"majority undersampled to {ratio}",
        "weighted": f"weighted sampling to {ratio}",
    }.get(sampling)
    return what if resampled is None else f"{what}, {resampled}"


def strategy_words(config: dict) -> str:
    """A run's imbalance strategy in plain words, for its figure's title: ``half the training data
    with sums near 100 (85-114), decision threshold tuned`` where the table says ``boundary 0.5,
    threshold tuned``."""
    data, model = config.get("data") or {}, config.get("model") or {}
    if not data:
        return "strategy unknown (no config.yaml)"
    parts = [training_data_words(data)]
    if model.get("pos_weight") == "balanced":
        parts.append("loss weighted to balance the classes")
    elif model.get("pos_weight") is not None:
        parts.append(f"class 1's loss weighted {model['pos_weight']}")
    parts += {"focal": ["focal loss"], "logit_adjusted": ["logit-adjusted loss"]}.get(model.get("loss", "bce"), [])
    threshold = model.get("decision_threshold", 0.5)
    parts.append("decision threshold tuned" if threshold == "tuned" else f"decision threshold {threshold}")
    return ", ".join(parts)


def caption(config: dict) -> str | None:
    """One line under the figure where the training loss is not measured on data like the
    validation loss's (a training split drawn or resampled otherwise, or a loss with an offset
    evaluation leaves out): the two curves then differ by construction, not by overfitting."""
    data, model = config.get("data") or {}, config.get("model") or {}
    reasons = []
    if data.get("train_distribution", "natural") != "natural" or data.get("sampling", "none") != "none":
        reasons.append(f"{training_data_words(data)} against natural validation data")
    if model.get("loss") == "logit_adjusted":
        reasons.append("the training loss adds logit adjustment's offset, the validation loss does not")
    if not reasons:
        return None
    return f"The training and validation losses are not comparable: {'; '.join(reasons)}."


def loss_name(model: dict) -> str:
    """What the loss panel's curves measure (validation uses the training loss function)."""
    if model.get("loss") == "focal":
        return "focal loss"
    return "binary cross-entropy" if model.get("pos_weight") is None else "binary cross-entropy, classes weighted"


def log_ticks(low: float, high: float) -> list[float]:
    """Ticks for a log axis from ``low`` to ``high`` that read as plain numbers: 1, 2, 5 per decade,
    or every digit where the range is narrower than that gives three ticks."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for digits in ((1, 2, 5), range(1, 10)):
        ticks = [d * 10.0**e for e in decades for d in digits if low <= d * 10.0**e <= high]
        if len(ticks) >= 3:
            return ticks
    return ticks


def plain_number(value: float, _position: Any = None) -> str:
    """A tick label without powers of ten: ``0.02``, ``5``, ``1,000``."""
    return f"{value:,.0f}" if value >= 1 and value == round(value) else f"{value:g}"


def count_axis(ax: Any, counts: list[float], size: int | None) -> None:
    """A readable count axis: plain integer ticks, a light grid, and, where the class's own size is
    in view, a line at it (every sequence of the class missed). Linear where the counts fit one
    scale; symlog (linear to 1, then log) where they span more than a factor of ten above 30, so
    that 28 and 4 misses still look different beside an epoch with hundreds."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    top = max(counts, default=0)
    if size is not None and size <= 1.5 * max(top, 1):
        ax.axhline(size, color="0.5", linewidth=0.8, linestyle="--", label=f"all {size:,} of the class")
        top = size
    nonzero = [c for c in counts if c > 0]
    if top > 30 and min(nonzero) * 10 < top:
        ax.set_yscale("symlog", linthresh=1, linscale=0.5)
        ticks = [0] + log_ticks(1, top * 2)
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_locator(
            FixedLocator(
                [d * 10.0**e for e in range(len(str(int(top))) + 1) for d in range(2, 10) if d * 10.0**e < top * 2]
            )
        )
        ax.set_ylim(-0.1, top * 2)  # below 0: an epoch without a miss shows above the axis; above: the legend
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10], min_n_ticks=3))
        ax.set_ylim(-0.02 * max(top, 3), max(top * 1.3, 3))  # headroom for the legend
    ax.yaxis.set_major_formatter(FuncFormatter(plain_number))
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", axis="y", alpha=0.12)  # symlog's 3, 4, 30, 40, ...: fainter than the labelled lines


def loss_panel(ax: Any, run: Run) -> None:
    """Training (dashed) and validation (solid) loss per epoch on a log axis labelled in plain numbers."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    values = []
    for tag, style, color, label in (
        ("train/loss_epoch", "--", "tab:orange", "training"),
        ("val/loss", "-", "tab:purple", "validation"),
    ):
        points = run.by_epoch(tag)
        if points:
            ax.plot(*zip(*points), style, color=color, label=label, marker="." if len(points) < 30 else None)
            values += [v for _, v in points if v > 0]
    ax.set(xlabel="epoch", ylabel=loss_name(run.config.get("model") or {}))
    ax.set_title("loss per epoch", fontsize=10)
    if values:
        ax.set_yscale("log")
        low, high = min(values) / 1.2, max(values) * 1.2
        ax.set_ylim(low, high)
        ax.yaxis.set_major_locator(FixedLocator(log_ticks(low, high)))
        ax.yaxis.set_major_formatter(FuncFormatter(plain_number))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)


def misses_panel(ax: Any, run: Run, cls: int, name: str, size: int | None) -> list[tuple[int, float]]:
    """One class's validation sequences classified wrong, per epoch, against the class's own size;
    returns the (epoch, value) drawn. A run logged before miss counts existed shows 1 - recall instead."""
    points = run.by_epoch(f"val/missed_{cls}")
    color = ("tab:blue", "tab:green")[cls]
    if points:
        ax.plot(*zip(*points), "-", color=color, label="missed", marker="." if len(points) < 30 else None)
        count_axis(ax, [v for _, v in points], size)
        ax.set_ylabel("sequences missed" if size is None else f"sequences missed, of {size:,}")
        ax.set_title(
            f"{name}: validation sequences" if size is None else f"{name}: {size:,} validation sequences", fontsize=10
        )
    else:
        points = [(e, 1 - v) for e, v in run.by_epoch(f"val/recall_{cls}")]
        if not points:
            return []
        ax.plot(*zip(*points), "-", color=color, label="1 - recall", marker="." if len(points) < 30 else None)
        ax.set_ylabel("share missed (1 - recall)")
        ax.set_title(f"{name}: validation sequences", fontsize=10)
        ax.grid(True, alpha=0.3)
    ax.set(xlabel="epoch")
    return points


def mark_best(ax: Any, run: Run, drawn: list[tuple[int, float]] = ()) -> None:
    """The epoch of the run's best checkpoint (best-epoch=NNN.ckpt, by its monitor): a dotted line,
    labelled with what the panel's curve reads there."""
    best = run.best
    if "epoch" not in best:
        return
    epoch = best["epoch"]
    label = f"best checkpoint (epoch {epoch})"
    at = dict(drawn)
    if epoch in at:
        label += f": {at[epoch]:,.0f} missed" if at[epoch] == round(at[epoch]) else f": {at[epoch]:.3g}"
    ax.axvline(epoch, color="black", linestyle=":", linewidth=1.2, label=label)


def figure(run: Run) -> Any:
    """One run's figure, a matplotlib ``Figure``: the loss per epoch, then for each class the
    validation sequences it holds that were classified wrong, each on its own count axis (the
    minority's few hundred beside the majority's tens of thousands), the best checkpoint's epoch
    marked; titled with the strategy in words, captioned where training and validation data differ."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(13, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    loss, *classes = fig.subplots(1, 3)
    loss_panel(loss, run)
    mark_best(loss, run)
    sizes = class_sizes(run)
    for cls, (ax, name) in enumerate(zip(classes, class_names(sizes, run.classes))):
        missed = misses_panel(ax, run, cls, name, None if sizes is None else sizes[cls])
        mark_best(ax, run, missed)
    for ax in (loss, *classes):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.legend(fontsize=8)
    fig.suptitle(f"{run.name}: {strategy_words(run.config)}", fontsize=11)
    text = caption(run.config)
    if text:
        fig.text(0.5, 0.015, text, ha="center", va="bottom", fontsize=9, style="italic")
    fig.tight_layout(rect=(0, 0.05 if text else 0, 1, 1))
    return fig


def plot(run: Run, out: Path) -> None:
    """Write ``figure(run)`` to ``out`` as a PNG."""
    with AtomicFile(out) as png:  # a full disk leaves the previous figure, not half of a new one
        figure(run).savefig(png, format="png")


# --- the end-of-fit summary ----------------------------------------------------------------------


def further_training(last: Path, config: dict) -> str:
    """What to run to train on from last.ckpt. Where the run stopped early (pre-empted, Ctrl-C),
    the same command with ``--ckpt_path last`` continues it; where it reached its max_epochs or
    max_steps, that command would train nothing (``fit`` refuses it), so the limit to raise is named."""
    trainer = config.get("trainer") or {}
    try:
        checkpoint = read_checkpoint(last)
    except ValueError:  # unreadable: fit's own resume check will say why
        return "continue training: the same command with --ckpt_path last"
    limits = {"max_steps": (None, trainer.get("max_steps", -1)), "max_epochs": (trainer.get("max_epochs"), -1)}
    reached = next(
        (name for name, (epochs, steps) in limits.items() if nothing_left_to_train(checkpoint, epochs, steps)), None
    )
    if reached is None:
        return "continue training: the same command with --ckpt_path last"
    # Not T_max: the scheduler resumes with its saved state, T_max included (docs/resume.md).
    return f"train further: the same command with --ckpt_path last and a larger --trainer.{reached}"


def fit_summary(run_dir: Path, best: Any, configs: list[str]) -> str:
    """What ``fit`` prints at its end: the run folder, the best checkpoint with its validation
    figures, last.ckpt with how to train on from it, and the commands to run next.

    Args:
        run_dir: the run folder.
        best: the ``ModelCheckpoint`` that keeps the best checkpoint (``best_model_path``).
        configs: the ``--config FILE`` arguments of the fit, repeated in the next commands.
    """
    run = read_run(run_dir)
    values = run.best
    last = run_dir / "checkpoints" / "last.ckpt"
    lines = [
        f"lightsum: fit finished: {run_dir} ({values['epochs']} validated epochs, {run.seconds:.0f} s of training)"
    ]
    if best.best_model_path:
        lines += [
            f"  best checkpoint  {best.best_model_path}  (epoch {values.get('epoch')}, by {best.monitor})",
            "    val "
            + "  ".join(
                f"{m} {fraction(values[m], 5)}"
                for m in ("recall_0", "recall_1", "min_recall", "boundary_accuracy")
                if m in values
            )
            + (
                f"  minority AP {fraction(values['average_precision_minority'], 5)}"
                if "average_precision_minority" in values
                else ""
            )
            + (f"  {misses(values, class_sizes(run), run.classes)}" if "missed_0" in values else "")
            + (f"  decision threshold {values['decision_threshold']:.4g}" if "decision_threshold" in values else ""),
        ]
    if last.is_file():
        lines.append(f"  last checkpoint  {last}  ({further_training(last, run.config)})")
    lines += [
        "next:",
        "  " + " ".join(["python -m lightsum test", *configs, "--ckpt_path", best.best_model_path or str(last)]),
        f"  python -m lightsum report {run_dir}",
        f"  tensorboard --logdir {run_dir.parent.parent}",
    ]
    return "\n".join(lines)


def misses(values: dict[str, float], sizes: tuple[int, int] | None, classes: tuple[str, str] | None = None) -> str:
    """``missed 2 of 470 in class 0 + 1 of 39,530 in class 1`` (``in class 1 'fraud'`` with files'
    class names), or ``missed 2 + 1 of 40,000`` where the class sizes are unknown."""
    name = [f" {classes[c]!r}" if classes else "" for c in (0, 1)]
    if sizes is None:
        of = f" of {values['sequences']:,.0f}" if "sequences" in values else ""
        if classes:
            return f"missed {values['missed_0']:.0f} in class 0{name[0]} + {values['missed_1']:.0f} in class 1{name[1]}{of}"
        return f"missed {values['missed_0']:.0f} + {values['missed_1']:.0f}{of}"
    return (
        f"missed {values['missed_0']:.0f} of {sizes[0]:,} in class 0{name[0]} + "
        f"{values['missed_1']:.0f} of {sizes[1]:,} in class 1{name[1]}"
    )


def read_runs(paths: list[Path]) -> list[Run]:
    """The runs of ``paths`` to report, in order.

    A run folder without ``val/min_recall`` is skipped with a note. So is a damaged one (a
    ``config.yaml`` that is not a config, an event file that is a folder or not an event file), the
    note naming the file and what is wrong, where there are other runs to report: a report of that
    one run stops with that line instead.
    """
    runs = []
    for path in paths:
        try:
            run = read_run(path)
        except DamagedFile as err:
            if len(paths) == 1:
                raise ValueError(f"report: {err}") from None
            note(f"note: report skips {path}: {err.path.name}: {err.problem}")
            continue
        if "val/min_recall" in run.series:
            runs.append(run)
        else:
            note(
                f"note: report skips {path}: no val/min_recall in its event files "
                "(a test or predict run, or a fit stopped before its first validation)"
            )
    return runs


def check_outputs(out: Path, names: list[str]) -> None:
    """Refuse, before anything is written, an output of ``report`` (``names`` in the folder ``out``)
    that exists and is not a regular file: a folder, a device or fifo (``/dev/null``), or a link,
    which the rename that writes an output would replace (a link to a run's ``config.yaml``, say).

    Raises:
        ValueError: naming the output and what it is.
    """
    for name in names:
        target = out / name
        if target.is_symlink():
            raise ValueError(
                f"report: {target} is a link to {os.readlink(target)}; report replaces only regular files: "
                "remove it or choose another --out"
            )
        kind = file_kind(target)
        if kind not in ("file", "missing"):
            raise ValueError(
                f"report: {target} is {kind}; report replaces only regular files: remove it or choose another --out"
            )


class ReportParser(OneLineParserErrors, argparse.ArgumentParser):
    error_context = "report: "
    help_hint = "lightsum report --help"


def report_main(argv: list[str]) -> None:
    """Parse ``report`` arguments, write the figures and the table, print the table.

    Run folders without ``val/min_recall`` (from ``test`` or ``predict``, or a fit stopped before
    its first validation), and damaged ones, are skipped with a note on stderr (``read_runs``). The
    outputs are checked before anything is written (``check_outputs``).
    """
    parser = ReportParser(
        prog="lightsum report",
        description="Figures and a comparison table of lightsum runs, read from their TensorBoard event files.",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders (lightning_logs/<name>/version_<n>) or folders holding them; or sweep folders "
        "(`lightsum sweep`), whose table and figure are written into them",
    )
    parser.add_argument(
        "--out",
        help="output folder for report.md and one PNG per run, named after the run "
        "(default/version_0 -> default_version_0.png) (default: lightning_logs/report)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write only the table (no matplotlib needed)")
    args = parser.parse_args(argv)
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError(
                "report draws figures with matplotlib, which is not installed: "
                "pip install 'lightsum[report]' (or pass --no-plots for the table only)"
            ) from None
    from lightsum.sweep import MANIFEST  # not at import: every command imports this module (figures.py)
    from lightsum.sweep_report import sweep_report

    sweeps = [Path(path) for path in args.runs if (Path(path) / MANIFEST).is_file()]
    if sweeps:  # a sweep's table goes into its folder
        if len(sweeps) < len(args.runs):
            raise ValueError("report: give sweep folders or run folders, not both")
        if args.out is not None:
            raise ValueError("report: a sweep's table is written into its folder: drop --out")
        for folder in sweeps:
            check_writable(folder, "report")
            check_outputs(folder, ["sweep.md", "sweep.csv", *([] if args.no_plots else ["sweep.png"])])
            sweep_report(folder, plots=not args.no_plots)
        return
    out = Path(args.out or "lightning_logs/report")
    check_writable(out, "report: --out")
    runs = read_runs(find_runs(args.runs))
    if not runs:
        raise ValueError(f"report: no run with val/min_recall in {', '.join(args.runs)}")
    for run, name in zip(runs, run_names([run.path for run in runs])):
        run.name = name
    figures = [] if args.no_plots else figure_files([run.name for run in runs])
    check_outputs(out, ["report.md", *figures])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"report: cannot create --out {out} ({err.strerror or err})") from None
    for run, file in zip(runs, figures):
        plot(run, out / file)
    text = table(runs)
    footnote = (
        "Validation metrics at the epoch of each run's best checkpoint (by its best_checkpoint.monitor, "
        "val/min_recall where config.yaml does not say); "
        "seconds: wall time from each event file's creation to its last scalar."
    )
    with AtomicFile(out / "report.md", "w") as md:
        md.write(f"{text}\n\n{footnote}\n")
    print(text)
    print(f"\nlightsum: wrote {out / 'report.md'}" + ("" if args.no_plots else f" and {len(runs)} figure(s)"))
