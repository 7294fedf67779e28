"""A schema: what a step of users' data is, measured on the training split (numbers: their count and
per-feature mean and std; tokens: the vocabulary) and the classes' names. The model carries it in its
hyperparameters, so a checkpoint reads raw new sequences as at training time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

PAD, UNKNOWN = 0, 1  # token codes: padding, and a token the training split never held
_STAT_ROWS = 8_192  # rows summed at a time: a few MB of float64 temporaries, whatever the file


def _valid_steps(values: np.ndarray, lengths: np.ndarray, rows: np.ndarray) -> Iterator[np.ndarray]:
    """The valid steps (padding left out) of ``rows``, a chunk of rows at a time: (steps, ...) arrays."""
    for start in range(0, len(rows), _STAT_ROWS):
        chunk = np.sort(rows[start : start + _STAT_ROWS])  # in file order: memory-mapped reads stay sequential
        x, n = values[chunk], lengths[chunk]
        yield x[np.arange(x.shape[1])[None, :] < n[:, None]]


def number_schema(values: np.ndarray, lengths: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """Per-feature mean and std of the valid steps of ``rows`` (float64 sums, in chunks)."""
    features = values.shape[2]
    total, squares, count = np.zeros(features), np.zeros(features), 0
    for steps in _valid_steps(values, lengths, rows):
        x = steps.astype(np.float64)  # (steps, F)
        total += x.sum(0)
        squares += np.square(x).sum(0)
        count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    # A constant feature carries nothing; dividing by 1 keeps it finite instead of dividing by 0.
    std[std < 1e-12] = 1.0
    return {"steps": "numbers", "features": int(features), "mean": mean.tolist(), "std": std.tolist()}


def token_schema(values: np.ndarray, lengths: np.ndarray, rows: np.ndarray, tokens: Sequence[str]) -> dict[str, Any]:
    """The vocabulary: the file's tokens that occur in the valid steps of ``rows``, in the file's order."""
    seen = np.zeros(len(tokens) + 1, dtype=bool)  # index: file code + 1 (code -1 pads)
    for codes in _valid_steps(values, lengths, rows):
        seen[codes.astype(np.int64) + 1] = True
    return {"steps": "tokens", "vocabulary": [t for t, s in zip(tokens, seen[1:]) if s]}


def vocabulary_codes(schema: dict[str, Any]) -> dict[str, int]:
    """Each token of the schema's vocabulary -> its model code (0 pads, 1 is unknown)."""
    return {token: code for code, token in enumerate(schema["vocabulary"], start=2)}


def token_codes(tokens: Sequence[str], schema: dict[str, Any]) -> torch.Tensor:
    """The model's code of each of a file's token codes, indexed by file code + 1 (so -1, padding,
    maps to ``PAD``): a batch of file codes becomes model codes with one gather."""
    index = vocabulary_codes(schema)
    return torch.tensor([PAD, *(index.get(t, UNKNOWN) for t in tokens)], dtype=torch.int64)


def check_schema(steps: str, features: int, schema: dict[str, Any], where: str) -> None:
    """Refuse a file whose steps differ from what the model was trained on."""
    if steps != schema["steps"]:
        raise ValueError(f"{where} holds {steps} but the model was trained on {schema['steps']}")
    if steps == "numbers" and features != schema["features"]:
        raise ValueError(f"{where} has {features} feature(s) a step but the model was trained on {schema['features']}")


def encode_sequences(
    sequences: Any, schema: dict[str, Any], lengths: Any = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw sequences as a model with ``schema`` reads them: (x, lengths or None).

    Numbers: an array (N, L) or (N, L, F), with ``lengths`` (N,) when rows are padded, or a list of
    per-sequence arrays (L_i,) or (L_i, F) of any lengths. Tokens: a list of strings of
    space-separated tokens, or a list of lists of tokens; a token outside the vocabulary reads as
    unknown. Raises ValueError on a wrong feature count, an empty sequence, NaN or inf.
    """
    if schema["steps"] == "tokens":
        rows = [s.split() if isinstance(s, str) else [str(t) for t in s] for s in sequences]
        vocabulary = vocabulary_codes(schema)
        codes = [[vocabulary.get(t, UNKNOWN) for t in row] for row in rows]
        return _padded([np.asarray(c, dtype=np.int64) for c in codes], np.int64)
    features = schema["features"]
    if isinstance(sequences, (np.ndarray, torch.Tensor)) and sequences.ndim in (2, 3):
        x = torch.as_tensor(np.asarray(sequences, dtype=np.float32) if isinstance(sequences, np.ndarray) else sequences)
        x = x.to(torch.float32)
        x = x.unsqueeze(-1) if x.ndim == 2 else x
        if x.shape[2] != features:
            raise ValueError(f"sequences have {x.shape[2]} feature(s) a step; the model reads {features}")
        lens = None if lengths is None else torch.as_tensor(np.asarray(lengths), dtype=torch.int64)
        if lens is not None and (len(lens) != len(x) or (len(lens) and (lens.min() < 1 or lens.max() > x.shape[1]))):
            raise ValueError(f"lengths must be {len(x)} values in [1, {x.shape[1]}]")
        valid = x if lens is None else x[torch.arange(x.shape[1])[None, :] < lens[:, None]]
        if not torch.isfinite(valid).all():
            raise ValueError("sequences hold NaN or inf")
        return x, lens
    arrays = []
    for i, s in enumerate(sequences):
        a = np.asarray(s, dtype=np.float32)
        a = a[:, None] if a.ndim == 1 else a
        if a.ndim != 2 or a.shape[1] != features or len(a) == 0:
            raise ValueError(f"sequence {i} has shape {a.shape}: each must be (steps, {features}) with steps >= 1")
        if not np.isfinite(a).all():
            raise ValueError(f"sequence {i} holds NaN or inf")
        arrays.append(a)
    return _padded(arrays, np.float32)


def _padded(arrays: list[np.ndarray], dtype: type) -> tuple[torch.Tensor, torch.Tensor]:
    for i, a in enumerate(arrays):
        if len(a) == 0:
            raise ValueError(f"sequence {i} has no steps")
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    longest = int(lengths.max()) if len(arrays) else 1
    x = np.zeros((len(arrays), longest, *arrays[0].shape[1:]) if arrays else (0, 1), dtype=dtype)
    for i, a in enumerate(arrays):
        x[i, : len(a)] = a
    if dtype == np.float32 and x.ndim == 2:
        x = x[..., None]
    return torch.from_numpy(x), torch.from_numpy(lengths)
