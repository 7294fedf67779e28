"""What a checkpoint needs beyond Lightning's defaults: crash-safe writes and the random states."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_warn


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its target, fsyncs it, then renames it.

    A kill at any moment leaves either the previous complete file or the new complete file under
    the checkpoint's name, never a partial one. (Lightning's own local save stages the bytes in the
    system temp folder and moves them; across filesystems that move is a copy, and nothing is
    fsynced.) Local paths only; remote URLs go through Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(path.parent)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            with open(partial, "wb") as f:
                self._write(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)


    def _write(self, checkpoint: dict[str, Any], f: Any) -> None:
        torch.save(checkpoint, f)


def remove_orphans(folder: Path) -> None:
    """Delete partial files left by writers that were killed (their process no longer exists)."""
    for partial in folder.glob(".*.partial-*"):
        remove_if_writer_died(partial, partial.name.rsplit("-", 1)[-1])


def remove_if_writer_died(partial: Path, pid: str) -> None:
    """Delete ``partial`` when the process ``pid`` that was writing it no longer exists."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        partial.unlink(missing_ok=True)
    except PermissionError:
        pass  # alive, another user's


def rng_states() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python random states, in types ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["torch.cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))


class RandomStates(pl.Callback):
    """Saves every rank's random states in each checkpoint and restores them on resume.

    Lightning's checkpoints hold weights, optimizer and loop counters but no random state, so a
    resumed run would draw other dropout masks (and data-loader seeds) than the uninterrupted
    run. With the states restored, a run stopped at an epoch boundary and resumed ends with the
    same weights, bit for bit on a CPU. The data order needs nothing: samplers are a pure function
    of (seed, epoch), and the epoch is in the loop state.
    """

    def state_dict(self) -> dict[str, Any]:
        mine = rng_states()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            every = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(every, mine)  # every rank dumps; rank 0 writes
            return {"per_rank": every}
        return {"per_rank": [mine]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        per_rank = state_dict["per_rank"]
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        world, rank = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if distributed else (1, 0)
        if len(per_rank) == world:
            set_rng_states(per_rank[rank])
        else:
            rank_zero_warn(
                f"the checkpoint holds the random states of {len(per_rank)} process(es) and this run has "
                f"{world}: continuing with fresh random states, so it will not match an uninterrupted run"
            )
