"""The random state of a run travels in its checkpoints, so a resumed run draws what the uninterrupted run would
have drawn (dropout masks, anything a user's code draws): part of the exact-resume guarantee, with the sampler
(`segkit.data.sampling`) and the training epoch's sums (`SegmentationModule`)."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RandomStates(L.Callback):
    """Saves the Python, NumPy, torch and CUDA generators of the saving process; restores them on load, which
    Lightning does just before training goes on. Under DDP every process restores the first process's states:
    seeded alike (seed_everything) and running the same code, processes draw alike."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        state = {
            "python": random.getstate(),
            # As tensors and numbers: a checkpoint loads with weights_only=True, which refuses NumPy arrays.
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        random.setstate(_as_tuples(state_dict["python"]))
        kind, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _as_tuples(value: Any) -> Any:
    """random.setstate wants tuples; a checkpoint may give lists back."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
