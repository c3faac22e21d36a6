"""Callbacks that interrupt their own training process, as a crash, a pre-emption or a user would."""

import os
import signal

from lightning.pytorch import Callback


class KillAtStep(Callback):
    """A signal to this process once `step` optimizer steps are done, in the middle of an epoch: SIGKILL (no
    clean-up, no last save) by default, or SIGTERM / SIGINT (`signum=15`, `signum=2`), which the run handles."""

    def __init__(self, step: int, signum: int = signal.SIGKILL) -> None:
        self.step = step
        self.signum = signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class KillAtEpochEnd(Callback):
    """SIGKILL at the end of epoch `epoch`, after its validation wrote its checkpoints and before the epoch's
    training scores were logged: the boundary case of a resume."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, *args) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class KillInValidation(Callback):
    """A signal to this process when the validation of epoch `epoch` starts (during fit): after the epoch's last
    training batch and whatever that batch saved, before the epoch's validation and epoch-end logging ran."""

    def __init__(self, epoch: int, signum: int = signal.SIGKILL) -> None:
        self.epoch = epoch
        self.signum = signum

    def on_validation_start(self, trainer, *args) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), self.signum)
