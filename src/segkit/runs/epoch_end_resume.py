"""A checkpoint written in the last training batch of an epoch resumes into that epoch's validation and epoch end.

Every mid-epoch save (`every_n_train_steps`, `train_time_interval`, a stop on SIGTERM) happens in
`on_train_batch_end`. When that batch is the epoch's last, Lightning (2.6) restores the checkpoint as a finished
epoch: the epoch's validation, its `on_train_epoch_end` (train loss and scores) and the validation checkpoint
never run, and the step count the loggers use moves on by one. Here such a checkpoint's loop state is rewritten,
as it is loaded, into the one Lightning resumes correctly: every training batch of the epoch done (as if saved
after the batch was complete) and the epoch's validation started but with no batch done, so that the resumed run
validates, ends the epoch and goes on exactly as the uninterrupted run did.
"""

from __future__ import annotations

from typing import Any

import lightning as L

FIT_LOOP = "fit_loop"
TRAIN_BATCHES = "epoch_loop.batch_progress"
VAL_BATCHES = "epoch_loop.val_loop.batch_progress"
EPOCHS = "epoch_progress"


def batches_done(loops: dict[str, Any]) -> int:
    """Training batches of its epoch a checkpoint's loop state says were trained (the epoch's all, at its end)."""
    return int(((loops.get(FIT_LOOP) or {}).get(TRAIN_BATCHES) or {}).get("current", {}).get("processed", 0))


def saved_in_last_batch(loops: dict[str, Any]) -> bool:
    """Saved in `on_train_batch_end` of an epoch's last batch: the batch processed but not completed, the epoch
    started but not processed."""
    fit = loops.get(FIT_LOOP) or {}
    batches, epochs = fit.get(TRAIN_BATCHES), fit.get(EPOCHS)
    if not batches or not epochs or not batches.get("is_last_batch"):
        return False
    total, epoch = batches["total"], epochs["total"]
    in_batch_end = total["ready"] == total["started"] == total["processed"] == total["completed"] + 1
    in_epoch = epoch["ready"] == epoch["started"] == epoch["processed"] + 1
    return in_batch_end and in_epoch


def resume_into_validation(loops: dict[str, Any]) -> None:
    """Rewrites (in place) the loop state of a last-batch checkpoint: the batch completed, validation begun."""
    fit = loops[FIT_LOOP]
    batches = fit[TRAIN_BATCHES]
    for counts in (batches["total"], batches["current"]):
        counts["completed"] = counts["processed"]
    validation = fit.get(VAL_BATCHES) or {"total": {}, "current": {}}
    for counts in (validation["total"], validation["current"]):
        counts.update(ready=1, started=1, processed=0, completed=0)
    validation["is_last_batch"] = False
    fit[VAL_BATCHES] = validation


def resumes_into_validation(trainer: L.Trainer, checkpoint: dict) -> bool:
    """Whether resuming `checkpoint` goes on with its epoch's validation and end (see the module's docstring)."""
    loops = checkpoint.get("loops") or {}
    if not saved_in_last_batch(loops):
        return False
    return validates_after(trainer, int(loops[FIT_LOOP][EPOCHS]["current"]["processed"]))


class ResumeIntoEpochEnd(L.Callback):
    """Applies `resume_into_validation` to a checkpoint being resumed, before Lightning restores its loops. Only
    where the epoch's validation is due (every epoch, the default): otherwise the epoch ends as Lightning decides."""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if resumes_into_validation(trainer, checkpoint):
            resume_into_validation(checkpoint["loops"])


def validates_after(trainer: L.Trainer, epoch: int) -> bool:
    """Whether epoch `epoch` ends with a validation (`check_val_every_n_epoch`, `limit_val_batches`)."""
    every = trainer.check_val_every_n_epoch
    return trainer.limit_val_batches != 0 and every is not None and (epoch + 1) % every == 0


def ends_epoch_without_validation(trainer: L.Trainer) -> bool:
    """In the last training batch of an epoch that no validation ends: a save here would resume as Lightning
    decides (a finished epoch, its end skipped), so segkit's own saves wait one batch."""
    last_batch = trainer.fit_loop.epoch_loop.batch_progress.current.processed >= trainer.num_training_batches
    return last_batch and not validates_after(trainer, trainer.current_epoch)
