"""Every process's random states, saved in each checkpoint and restored on resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn


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
