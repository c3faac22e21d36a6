"""A callback that kills its own training process: a run interrupted as a crash or a pre-emption leaves it."""

import os
import signal

from lightning.pytorch import Callback


class KillAtStep(Callback):
    """SIGKILL (no clean-up, no last save) once `step` optimizer steps are done, in the middle of an epoch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
