"""The time budget of the learning-rate schedule: with `trainer.max_time`, the schedule decays by steps or by time,
whichever is further along (segkit.training.schedules)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer


class TimeBudget(L.Callback):
    """With a time limit (`trainer.max_time`: Lightning's Timer), sizes the learning-rate schedule to the time: at the
    start of each training batch it tells the schedule what share of the budget will have passed when the batch ends
    (its `set_time_progress`, see segkit.training.schedules), so the rate decays by steps or by time, whichever is
    further along. The batch expected to end past the budget is the last: it runs at the schedule's final rate and
    training stops after it (Lightning's Timer would stop after the next one). The share is measured on the Timer's
    clock (which a resumed run restores) plus the recent batch time, and taken from the first process, so every
    process steps the same rate. Listed before the learning-rate monitor, which then logs the rate each batch uses.
    Without a time limit it does nothing. In `conf/callbacks/default.yaml`.

    Args:
        smoothing: the weight of the newest batch in the running batch time (an exponential moving average).

    Example:
        >>> import lightning as L
        >>> from segkit.callbacks import TimeBudget
        >>> trainer = L.Trainer(max_time="00:01:00:00", callbacks=[TimeBudget()])  # doctest: +SKIP
    """

    def __init__(self, smoothing: float = 0.3) -> None:
        self.smoothing = smoothing
        self._last: float | None = None
        self._batch_s: float | None = None
        self._stop = False

    @staticmethod
    def _timer(trainer: L.Trainer) -> Timer | None:
        return next((cb for cb in trainer.callbacks if isinstance(cb, Timer) and cb.time_remaining() is not None), None)

    # Validation, or an epoch boundary, between two batches is not batch time.
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        timer = self._timer(trainer)
        schedules = [c.scheduler for c in trainer.lr_scheduler_configs if hasattr(c.scheduler, "set_time_progress")]
        if timer is None or not schedules:
            return
        elapsed, remaining = timer.time_elapsed(), timer.time_remaining()
        if self._last is not None:
            batch_s = elapsed - self._last
            self._batch_s = (
                batch_s if self._batch_s is None else ((1 - self.smoothing) * self._batch_s + self.smoothing * batch_s)
            )
        self._last = elapsed
        progress = (elapsed + (self._batch_s or 0.0)) / max(elapsed + remaining, 1e-9)
        progress = float(trainer.strategy.broadcast(min(1.0, progress)))
        self._stop = progress >= 1.0
        for schedule in schedules:
            schedule.set_time_progress(progress)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._stop:
            trainer.should_stop = True
