"""Reading checkpoints: every checkpoint lightsum loads (a user's ``--ckpt_path``, ``last``, ``hpc``, a
requeued SLURM job's, and Lightning's own restore through ``AtomicCheckpointIO``) is read here, with
torch's weights-only unpickler whatever the environment says, checked whole, or refused in one line."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from lightsum.errors import note

REQUIRED = ("state_dict", "hyper_parameters", "epoch", "global_step")
MAX_LAYERS = 1000  # far past any LSTM that trains; building more on the meta device alone takes minutes


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded with torch's weights-only unpickler, checked whole.

    ``weights_only=True`` is passed explicitly: torch's ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` then
    cannot turn it off, and nothing in a checkpoint but tensors and plain data is ever rebuilt.

    Raises:
        ValueError: one line naming the file and what is wrong with it: missing, empty, not a torch
            zip archive or damaged, holding a pickled object (named; nothing of it runs), missing
            parts of a lightsum checkpoint, weights that are not tensors, hyperparameters that do
            not build a model or build one larger than this machine's memory, or weights whose
            shapes the stored hyperparameters do not make.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint is empty (0 bytes): {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint is corrupt or not a torch checkpoint: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.testzip() is not None:
                raise ValueError(f"checkpoint is corrupt (bad CRC): {path}")
    except (zipfile.BadZipFile, OSError, EOFError) as err:  # a central directory that lies
        raise ValueError(f"checkpoint is corrupt: {path} ({err})") from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f"a pickled {found[1]}" if found else "pickled objects"
        raise ValueError(
            f"checkpoint {path} holds {what}, which only running its code could rebuild: refused "
            "(checkpoints are read with torch's weights-only loader)"
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"checkpoint is corrupt: {path} ({(str(err).splitlines() or [type(err).__name__])[0]})"
        ) from None
    missing = [key for key in REQUIRED if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ValueError(f"{path} is not a lightsum checkpoint: it has no {', '.join(missing)}")
    check_weights_fit(checkpoint, path)
    return checkpoint


def check_weights_fit(checkpoint: dict[str, Any], path: str) -> None:
    """Refuse weights that the checkpoint's own hyperparameters do not build (a file edited or
    assembled by hand), comparing every name and shape with a model built from them on torch's
    meta device: shapes without memory, so hyperparameters asking for terabytes allocate nothing."""
    from lightsum.classifier import SumClassifier
    from lightsum.data.memory import available_memory

    hparams, weights = checkpoint["hyper_parameters"], checkpoint["state_dict"]
    if not isinstance(hparams, dict) or not all(isinstance(k, str) for k in hparams):
        raise ValueError(
            f"checkpoint {path}: hyper_parameters must be a mapping of names, got {type(hparams).__name__}"
        )
    if not isinstance(weights, dict):
        raise ValueError(f"checkpoint {path}: state_dict must be a mapping of tensors, got {type(weights).__name__}")
    layers = hparams.get("num_layers", 1)
    if isinstance(layers, int) and layers > MAX_LAYERS:  # each layer is a module even on the meta device
        raise ValueError(f"checkpoint {path}: its hyperparameters ask for {layers} LSTM layers (at most {MAX_LAYERS})")
    try:
        with torch.device("meta"):
            expected = SumClassifier(**{k: v for k, v in hparams.items() if not k.startswith("_")}).state_dict()
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:  # RuntimeError: sizes past int64
        raise ValueError(f"checkpoint {path}: its hyperparameters do not build a SumClassifier ({err})") from None
    size = sum(tensor.numel() * tensor.element_size() for tensor in expected.values())
    available = available_memory()
    if available is not None and size > available:
        raise ValueError(
            f"checkpoint {path}: its hyperparameters make a model of {size / 1e9:.1f} GB, and this "
            f"machine has {available / 1e9:.1f} GB available"
        )
    for name, tensor in expected.items():
        if name not in weights:
            raise ValueError(f"checkpoint {path}: no weights for {name}")
        if not isinstance(weights[name], torch.Tensor):
            raise ValueError(f"checkpoint {path}: {name} is a {type(weights[name]).__name__}, not a tensor")
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"checkpoint {path}: {name} has shape {tuple(weights[name].shape)}, but its "
                f"hyperparameters make {tuple(tensor.shape)}"
            )
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise ValueError(f"checkpoint {path}: weights the model does not have: {', '.join(map(str, extra[:3]))}")


def newest_loadable(candidates: Iterable[Path], where: str) -> Path:
    """The newest of ``candidates`` (by modification time) that ``read_checkpoint`` accepts.

    Each newer one refused is named in a ``lightsum:`` note with what is wrong with it, so a
    damaged ``last.ckpt`` or ``hpc_ckpt_N.ckpt`` costs the progress since the checkpoint before it,
    not the run.

    Raises:
        ValueError: none of them loads (or there are none), naming each and why: a SLURM job
            then fails instead of being requeued to fail again.
    """
    refused = {}
    for path in sorted(set(candidates), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            read_checkpoint(path)
        except ValueError as err:
            refused[path] = err
            continue
        for skipped, err in refused.items():
            note(f"skipped {skipped}: {err}")
        return path
    if not refused:
        raise ValueError(f"no checkpoint to resume from in {where}")
    raise ValueError(f"no checkpoint in {where} loads ({'; '.join(map(str, refused.values()))})")


def nothing_left_to_train(checkpoint: dict[str, Any], max_epochs: int | None, max_steps: int) -> str | None:
    """Why resuming ``checkpoint`` would train nothing under these limits (it reached them), or None.

    Lightning would restore it, run no step and end as a successful fit: a silent no-op.
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    epochs = progress.get("processed")  # epochs whose training ran to the end
    if max_steps > 0 and checkpoint["global_step"] >= max_steps:
        return f"it trained {checkpoint['global_step']} steps and --trainer.max_steps is {max_steps}: raise it"
    if max_epochs is not None and max_epochs >= 0 and isinstance(epochs, int) and epochs >= max_epochs:
        return (
            f"it trained {epochs} epochs and --trainer.max_epochs is {max_epochs}: raise it to train further "
            "(the learning-rate schedule resumes as saved, and a cosine schedule climbs again past its T_max: "
            "for a longer schedule, start a new fit with both larger)"
        )
    return None
