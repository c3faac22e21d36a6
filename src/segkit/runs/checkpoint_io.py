"""Checkpoint files that are never half-written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from segkit.runs.atomic import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside its target, flushes it to disk, then renames it over the
    target: a process killed during a save leaves the previous `last.ckpt` whole. (Lightning's own save writes
    through a temporary file in the system temp folder; when the logs live on another filesystem, that last
    step is a copy, which a kill can cut short.) A kill can leave the temporary file; the next start of the run
    removes it (`segkit.runs.atomic.remove_leftovers`). A plugin of every trainer (`conf/trainer/default.yaml`).

    Takes no arguments.

    Example:
        >>> import lightning as L
        >>> from segkit.runs.checkpoint_io import AtomicCheckpointIO
        >>> trainer = L.Trainer(plugins=[AtomicCheckpointIO()])  # doctest: +SKIP
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options.")
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)
