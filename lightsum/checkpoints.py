"""Reading a checkpoint a user names: refused in one line when it is missing, damaged, foreign or
inconsistent, and never unpickled beyond tensors and plain data."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any

import torch

REQUIRED = ("state_dict", "hyper_parameters", "epoch", "global_step")


def read_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded with torch's weights-only unpickler, checked whole.

    Raises:
        ValueError: one line naming the file and what is wrong with it: missing, not a torch zip
            archive or damaged, holding a pickled object (named; nothing of it runs), missing parts
            of a lightsum checkpoint, or weights whose shapes the stored hyperparameters do not make.
    """
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint is corrupt or not a torch checkpoint: {path}")
    with zipfile.ZipFile(path) as archive:
        if archive.testzip() is not None:
            raise ValueError(f"checkpoint is corrupt (bad CRC): {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f"a pickled {found[1]}" if found else "pickled objects"
        raise ValueError(f"checkpoint {path} holds {what}, which only running its code could rebuild: refused "
                         "(checkpoints are read with torch's weights-only loader)") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"checkpoint is corrupt: {path} ({str(err).splitlines()[0]})") from None
    missing = [key for key in REQUIRED if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ValueError(f"{path} is not a lightsum checkpoint: it has no {', '.join(missing)}")
    check_weights_fit(checkpoint, path)
    return checkpoint


def check_weights_fit(checkpoint: dict[str, Any], path: str) -> None:
    """Refuse weights that the checkpoint's own hyperparameters do not build (a file edited or
    assembled by hand), comparing every name and shape with a model built from them (on the CPU,
    with the global random state put back afterwards)."""
    from lightsum.classifier import SumClassifier

    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    try:
        with torch.random.fork_rng(devices=[]):
            expected = SumClassifier(**hparams).state_dict()
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path}: its hyperparameters do not build a SumClassifier ({err})") from None
    weights = checkpoint["state_dict"]
    for name, tensor in expected.items():
        if name not in weights:
            raise ValueError(f"checkpoint {path}: no weights for {name}")
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise ValueError(f"checkpoint {path}: {name} has shape {tuple(weights[name].shape)}, but its "
                             f"hyperparameters make {tuple(tensor.shape)}")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise ValueError(f"checkpoint {path}: weights the model does not have: {', '.join(extra[:3])}")
