"""Stopping a run saves it: SIGTERM (preemption, Kubernetes, most schedulers) and the first Ctrl-C finish the
training batch in progress (or the validation in progress), write `last.ckpt` atomically and exit; a second Ctrl-C
exits at once. The checkpoint resumes exactly (`python train.py ckpt_path=last`)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from segkit.runs.epoch_end_resume import ends_epoch_without_validation

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(Exception):
    """Training stopped on a signal after saving `checkpoint`."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        self.signum, self.checkpoint = signum, checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"Stopped by {name}; the run was saved to {checkpoint}.")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by this signal


class StopAndSave(L.Callback):
    """Replaces Lightning's SIGTERM handling during fit (which stops without saving) and Python's Ctrl-C (which
    stops wherever it lands). Under DDP the decision is taken together: any process asked, every process stops at
    the same batch and the first one writes the checkpoint."""

    def __init__(self, checkpoint: str | Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.requested: int | None = None
        self.saved = False
        self._previous: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        if self.requested is None:
            log.warning(
                "%s received: saving after the current training batch, then stopping%s.",
                signal.Signals(signum).name,
                " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "",
            )
            launcher = self._trainer.strategy.launcher if self._trainer is not None else None
            if isinstance(launcher, _SubprocessScriptLauncher):  # processes Lightning started get the news too
                launcher.kill(signum)
        self.requested = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Installed here, after Lightning has installed its own SIGTERM handler (which it restores after fit)."""
        self._trainer = trainer
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals are not ours to take
                return

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            # Once saved and stopping, a later SIGTERM (a launcher passing the stop on) must not cut the exit short.
            stopping = self.saved and signum == signal.SIGTERM
            signal.signal(signum, signal.SIG_IGN if stopping else handler)
        self._previous = {}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Saves where Lightning knows how to resume (as a checkpoint every N steps would); the stop itself comes
        at the next batch or validation, after Lightning has logged this one. In an epoch's last batch too: the
        resumed run validates and ends that epoch (`segkit.runs.epoch_end_resume`), so a stop does not wait for a
        validation that may take minutes. Only where no validation follows that batch is the save left to the
        epoch's end, and the stop comes one batch into the next epoch."""
        asked = self.requested is not None
        if trainer.world_size > 1:
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        if not asked or self.saved:
            return
        if ends_epoch_without_validation(trainer):
            return
        trainer.save_checkpoint(self.checkpoint)
        self.saved = True
        log.warning("Saved %s at epoch %d, step %d.", self.checkpoint, trainer.current_epoch, trainer.global_step)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._stop_if_saved()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._stop_if_saved()

    def _stop_if_saved(self) -> None:
        if self.saved:
            raise RunStopped(self.requested or signal.SIGTERM, self.checkpoint)
