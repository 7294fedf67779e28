"""SequenceFiles: users' labelled sequence files (.npz, .csv, .parquet) as lightsum's second data source."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import torch

from lightsum.data.batches import NATURAL, SequenceSet
from lightsum.data.files import SequenceFile, read_sequence_file
from lightsum.data.module import Placement, SequenceDataModule
from lightsum.data.samplers import Sampling
from lightsum.data.schema import check_schema, number_schema, token_codes, token_schema
from lightsum.errors import POSITIVE_INT, check_arguments, is_number

Steps = Literal["auto", "numbers", "tokens"]
_NATURAL_NAMES = ({"0", "1"}, {"false", "true"})  # labels whose class 1 needs no naming

_RULES = {
    **dict.fromkeys(("batch_size", "eval_batch_size"), POSITIVE_INT),
    **dict.fromkeys(("val_fraction", "test_fraction"), (lambda v: is_number(v) and 0.0 < v < 1.0, "in (0, 1)")),
    "sampling_ratio": (lambda v: is_number(v) and 0.0 < v <= 1.0, "in (0, 1]"),
}


class SequenceFiles(SequenceDataModule):
    """Labelled sequences from users' files: numbers (one or several features a step) or tokens,
    of any lengths, in ``.npz``, ``.csv`` or ``.parquet`` (docs/your-data.md).

    Files are read once into memory-mapped arrays cached beside them (``<file>.lightsum/``), which
    every process on the machine shares. Without ``val_path`` or ``test_path`` the training file is
    split, stratified by class, by ``seed``. Which class is the minority is measured, not assumed.

    Args:
        train_path: the training file. Needed by ``fit``, and by evaluations of its own splits.
        val_path: the validation file; default: ``val_fraction`` of the training file.
        test_path: the test file; default: ``test_fraction`` of the training file.
        val_fraction: share of each class of the training file held out for validation.
        test_fraction: share of each class of the training file held out for testing.
        label_column: the label column (``.csv``, ``.parquet``); in ``.npz`` the labels are ``y``.
        sequence_column: the sequence column (``.csv``: steps separated by spaces; ``.parquet``: a
            list column); in ``.npz`` the sequences are ``x`` (N, L) or (N, L, F), with optional ``lengths``.
        steps: ``numbers``, ``tokens``, or ``auto``: numbers when the first row's steps all are.
        positive_label: the label value of class 1, when the labels are not 0/1 or false/true.
        batch_size: sequences per training batch.
        eval_batch_size: sequences per batch for validation, test and predict.
        seed: seed of the splits and of the training sampler.
        sampling: resampling of the training split each epoch: ``none``, ``oversample``,
            ``undersample`` or ``weighted``.
        sampling_ratio: minority/majority ratio after resampling, in (0, 1].
        predict_path: sequences to ``predict`` (labels optional); default: the test split.
        placement: where the sequences live: ``device`` moves them once to the training device
            (one copy per device), ``host`` keeps them memory-mapped in host memory (one copy per
            machine), ``auto`` is ``device`` on a CUDA accelerator.
        schema: the schema of the model being evaluated or resumed, set by the CLI from the
            checkpoint; ``fit`` measures it on the training split.
        cache: keep the converted arrays beside each file for the next run.
    """

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        label_column: str = "label",
        sequence_column: str = "sequence",
        steps: Steps = "auto",
        positive_label: str | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 1024,
        seed: int = 0,
        sampling: Sampling = "none",
        sampling_ratio: float = 1.0,
        predict_path: str | None = None,
        placement: Placement = "auto",
        schema: dict[str, Any] | None = None,
        cache: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["schema"])
        check_arguments("data", self.hparams, _RULES)
        self.given_schema = schema
        self.measured_schema: dict[str, Any] | None = None
        self.files: dict[str, SequenceFile] = {}  # read once per path
        self.split_rows: dict[str, np.ndarray] | None = None  # rows of the training file per split

    # Reading ---------------------------------------------------------------------------------
    def read(self, key: str, labels: str = "required") -> SequenceFile:
        """The file of ``data.<key>`` (e.g. ``train_path``), read once."""
        path = self.hparams[key]
        if path is None:
            raise ValueError(f"data.{key} is not set: give --data.{key} FILE")
        if key not in self.files:
            h = self.hparams
            self.files[key] = read_sequence_file(
                path,
                where=f"data.{key}",
                label_column=h.label_column,
                sequence_column=h.sequence_column,
                steps=h.steps,
                labels=labels,
                cache=h.cache,
            )
        return self.files[key]

    def classes(self) -> list[str]:
        """The names of class 0 and class 1: the model's, or measured on the training file."""
        if self.given_schema is not None:
            return list(self.given_schema["classes"])
        names = list(self.read("train_path").label_names)
        where = f"data.train_path: {self.hparams.train_path}"
        if len(names) < 2:
            raise ValueError(f"{where} holds one class only ({names[0]!r}): a classifier needs two")
        if len(names) > 2:
            shown = ", ".join(repr(n) for n in names[:6]) + (", ..." if len(names) > 6 else "")
            raise ValueError(f"{where} holds {len(names)} label values ({shown}): lightsum classifies two classes")
        positive = self.hparams.positive_label
        if positive is not None:
            if str(positive) not in names:
                raise ValueError(
                    f"data.positive_label={positive!r} is not a label of {where} ({names[0]!r}, {names[1]!r})"
                )
            return [n for n in names if n != str(positive)] + [str(positive)]
        if {n.lower() for n in names} in _NATURAL_NAMES:
            return names  # sorted: "0" < "1", "false" < "true"
        raise ValueError(f"{where} has labels {names[0]!r} and {names[1]!r}: name class 1 with --data.positive_label")

    def labels_of(self, file: SequenceFile, key: str) -> torch.Tensor | None:
        """A file's labels as 0/1 by the classes' names; a value outside them is refused."""
        if file.label_codes is None:
            return None
        classes = self.classes()
        lookup = np.full(len(file.label_names), 255, dtype=np.uint8)
        for code, name in enumerate(file.label_names):
            if name in classes:
                lookup[code] = classes.index(name)
        labels = lookup[np.asarray(file.label_codes)]
        if (labels == 255).any():
            row = int(np.flatnonzero(labels == 255)[0])
            raise ValueError(
                f"data.{key}: {file.path}, row {row}: label {file.label_names[file.label_codes[row]]!r} is "
                f"neither class of the training data ({classes[0]!r}, {classes[1]!r})"
            )
        return torch.from_numpy(labels)

    def splits(self) -> dict[str, np.ndarray]:
        """Rows of the training file in each split: a stratified split by ``seed`` for the splits
        that have no file of their own. A split left without a class is refused with the counts."""
        if self.split_rows is not None:
            return self.split_rows
        h = self.hparams
        labels = self.labels_of(self.read("train_path"), "train_path").numpy()
        carved = {
            "val": h.val_fraction if h.val_path is None else 0.0,
            "test": h.test_fraction if h.test_path is None else 0.0,
        }
        if sum(carved.values()) >= 1:
            raise ValueError(
                f"data.val_fraction + data.test_fraction = {sum(carved.values())}: nothing left to train on"
            )
        g = np.random.Generator(np.random.PCG64(np.random.SeedSequence([h.seed, 7])))
        rows: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        counts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for cls in (0, 1):
            members = g.permutation(np.flatnonzero(labels == cls))
            n_val, n_test = (round(len(members) * carved[s]) for s in ("val", "test"))
            parts = {
                "val": members[:n_val],
                "test": members[n_val : n_val + n_test],
                "train": members[n_val + n_test :],
            }
            for split, part in parts.items():
                rows[split].append(part)
                counts[split].append(len(part))
        names = self.classes()
        for split in ("train", *(s for s in ("val", "test") if carved[s])):
            for cls in (0, 1):
                if counts[split][cls] == 0:
                    total = counts["train"][cls] + counts["val"][cls] + counts["test"][cls]
                    raise ValueError(
                        f"data.train_path: {h.train_path}: the {split} split would hold no sequence of class "
                        f"{names[cls]!r} ({total} in the file; train/val/test get "
                        f"{counts['train'][cls]}/{counts['val'][cls]}/{counts['test'][cls]}): give --data.val_path "
                        "and --data.test_path, or change data.val_fraction / data.test_fraction"
                    )
        self.split_rows = {split: np.sort(np.concatenate(parts)) for split, parts in rows.items()}
        return self.split_rows

    def schema(self) -> dict[str, Any]:
        """The model's schema: given (an evaluated or resumed checkpoint's), or measured on the
        training split: what a step is, and the classes' names."""
        if self.given_schema is not None:
            return self.given_schema
        if self.measured_schema is None:
            file, rows = self.read("train_path"), self.splits()["train"]
            values, lengths = np.asarray(file.values), np.asarray(file.lengths)
            if file.steps == "tokens":
                measured = token_schema(values, lengths, rows, file.tokens)
            else:
                measured = number_schema(values, lengths, rows)
            self.measured_schema = {**measured, "classes": self.classes()}
        return self.measured_schema

    # Sets ------------------------------------------------------------------------------------
    def sequence_set(self, key: str, split: str | None = None, labels: str = "required") -> SequenceSet:
        """The set of ``data.<key>``'s file: its rows of ``split`` (of the training file), or all."""
        file = self.read(key, labels)
        schema = self.schema()
        check_schema(file.steps, file.num_features, schema, f"data.{key}: {file.path}")
        y = self.labels_of(file, key) if key != "predict_path" else None  # predict reads no labels
        rows = None if split is None else torch.from_numpy(self.splits()[split])
        if y is not None and rows is not None:
            y = y[rows]
        if y is not None:  # a recall per class needs both
            self.refuse_one_class(y, key, split)
        with warnings.catch_warnings():
            # The cache's memory maps are read-only and lightsum never writes them: torch warns
            # about writing through a tensor to non-writable memory, which never happens here.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.asarray(file.values))
            lengths = torch.from_numpy(np.asarray(file.lengths))
        full = bool((lengths == x.shape[1]).all())
        codes = token_codes(file.tokens, schema) if file.steps == "tokens" else None
        return SequenceSet(x, y, None if full else lengths, rows=rows, codes=codes)

    def refuse_one_class(self, labels: torch.Tensor, key: str, split: str | None) -> None:
        positives = int(labels.sum())
        for cls, count in ((0, len(labels) - positives), (1, positives)):
            if count == 0:
                what = f"the {split} split of data.{key}" if split else f"data.{key}"
                raise ValueError(
                    f"{what} ({self.hparams[key]}) holds no sequence of class {self.classes()[cls]!r} "
                    f"among its {len(labels)}: its recall would be undefined"
                )

    def validation(self, key: str, split: str | None) -> SequenceSet:
        """The validation set: natural data only, each sequence weighing the same in tuning the threshold."""
        data = self.sequence_set(key, split)
        data.weights = torch.full((len(data),), 1 / len(data))
        data.parts = torch.full((len(data),), NATURAL, dtype=torch.uint8)
        return data

    def evaluation_file(self, split: str) -> tuple[str, str | None]:
        """(data key, split of the training file or None) of the ``val`` or ``test`` set."""
        key = f"{split}_path"
        if self.hparams[key] is not None:
            return key, None
        if self.hparams.train_path is None:
            raise ValueError(
                f"data.{key} and data.train_path are not set: give --data.{key} FILE, or the --data.train_path "
                f"the model was trained with (its {split} split is carved from it)"
            )
        return "train_path", split

    def load_predict_file(self) -> None:
        """Read and check ``predict_path`` now (the CLI calls it before a run folder is made)."""
        if self.hparams.predict_path and self.predict_set is None:
            self.predict_set = self.sequence_set("predict_path", labels="optional")

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_set is None:
            self.train_set = self.sequence_set("train_path", "train")
            self.sample_training(self.train_set.labels)
        if stage in ("fit", "validate") and self.validation_set is None:
            self.validation_set = self.validation(*self.evaluation_file("val"))
        if (stage == "test" or (stage == "predict" and not self.hparams.predict_path)) and self.test_set is None:
            self.test_set = self.sequence_set(*self.evaluation_file("test"))
        if stage == "predict":
            self.load_predict_file()
            if self.predict_set is None:
                self.predict_set = self.test_set
        self.place()
