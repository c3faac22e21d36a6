"""`last.ckpt` in the middle of an epoch too, so that a SIGKILL loses a bounded amount of work however long an
epoch is (an ADE20K or Cityscapes epoch is hours on one GPU; preemption and the OOM killer do not wait)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from segkit.runs.epoch_end_resume import ends_epoch_without_validation


def as_timedelta(interval: str | float | int | timedelta | None) -> timedelta | None:
    """`"DD:HH:MM:SS"` (as `trainer.max_time` takes it), minutes as a number, a timedelta, or None."""
    if interval is None or isinstance(interval, timedelta):
        return interval
    if isinstance(interval, (int, float)):
        return timedelta(minutes=interval)
    parts = str(interval).split(":")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(
            f"train_time_interval={interval!r} is not a duration. Fix: write it as DD:HH:MM:SS "
            "(00:00:30:00 is 30 minutes) or a number of minutes, or null for no time-based checkpoint."
        )
    days, hours, minutes, seconds = map(int, parts)
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


class PeriodicCheckpoint(ModelCheckpoint):
    """Writes `<dirpath>/last.ckpt` (atomically, like every checkpoint of a run) every `train_time_interval` of
    wall time during training or every `every_n_train_steps` optimizer steps, mid-epoch; never at an epoch's end,
    which the run's `last_checkpoint` covers. A run resumed from one continues exactly (`segkit.runs.epoch_end_resume`
    for a save in an epoch's last batch). A save due in the last batch of an epoch that no validation ends
    (`check_val_every_n_epoch`) comes one batch later: resumed from there, Lightning would skip that epoch's end.

    Args:
        dirpath: the run's checkpoint folder.
        train_time_interval: "DD:HH:MM:SS" or minutes; None for no time-based save.
        every_n_train_steps: a save every N optimizer steps; None or 0 for none. With both set, steps win
            (Lightning's ModelCheckpoint takes one trigger).

    Example:
        >>> callback = PeriodicCheckpoint("logs/run/checkpoints", train_time_interval="00:00:30:00")
        >>> callback.dirpath.endswith("checkpoints"), callback.filename
        (True, 'last')
        >>> trainer = L.Trainer(callbacks=[callback])  # doctest: +SKIP
    """

    def __init__(
        self,
        dirpath: str | Path,
        train_time_interval: str | float | timedelta | None = "00:00:30:00",
        every_n_train_steps: int | None = None,
    ) -> None:
        steps = int(every_n_train_steps or 0)
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
            every_n_train_steps=steps or None,
            train_time_interval=None if steps else as_timedelta(train_time_interval),
            every_n_epochs=0,  # epoch ends belong to last_checkpoint; with no trigger at all, nothing is saved
        )
        self._deferred: str | None = None  # a save due in a last batch that no validation ends, made one batch on

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if ends_epoch_without_validation(trainer):
            self._deferred = filepath
            return
        super()._save_checkpoint(trainer, filepath)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            super()._save_checkpoint(trainer, deferred)
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
