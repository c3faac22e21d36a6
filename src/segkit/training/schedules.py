"""Learning-rate schedules stepped per optimizer step (the optimizers themselves are torch.optim classes, named in
conf/optimizer/).

Configs give them as partials; the LightningModule completes them with the optimizer and the
run's total number of optimizer steps, which only the Trainer knows.

Time budgets: a run with `trainer.max_time` is stopped by its time limit, usually long before the `total_steps` its
max_epochs give. Its schedule decays by whichever is further along, the steps or the time budget:
`progress = max(step progress, time progress)`. segkit.callbacks.TimeBudget sets the time progress at the start of each
training batch from Lightning's own Timer, the one that stops the run, so the rate reaches its final value (0 for
poly, min_lr for cosine) when the time is up. Without a time limit the time progress stays 0: the plain step schedule.

Held groups: a frozen backbone that unfreezes later (`backbone.unfreeze_at_epoch`, segkit.training.freezing) is in
the optimizer from the start, in its own groups, which the schedule holds at rate 0 (`hold_groups`) until they are
released (`release_held_groups`, at the step the backbone starts training); from there their rate ramps linearly to
the schedule's over their own warm-up steps. The step each group starts from is plain data in the schedule's state,
so a resumed run continues the ramp where it was.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

SHAPES = ("poly", "cosine")


class WarmupDecayLR(LRScheduler):
    """lr = base_lr x warmup(step) x decay(progress), in closed form from the step count (`last_epoch`, which
    Lightning's scheduler state restores) and `time_progress`:
    - warmup: linear from `warmup_start` to 1 over the first `warmup_steps` optimizer steps;
    - progress: max((step - warmup_steps) / (total_steps - warmup_steps), time_progress), within [0, 1];
    - decay: poly (1 - progress)^power, or cosine from base_lr down to `min_lr` (an absolute learning rate).
    Past the end the rate stays at its final value. Only plain values are attributes: the state dict stays data.

    Each group's rate is further multiplied by its own factor: 1 for a group that always trains (`group_start` 0);
    0 for a held group (`group_start` None, see `hold_groups`) until it is released at step s, then
    min(1, (step - s + 1) / warmup) over its `group_warmup_steps` (1 at once without warm-up)."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        shape: str = "poly",
        power: float = 0.9,
        min_lr: float = 0.0,
        warmup_steps: int = 0,
        warmup_start: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        if shape not in SHAPES:
            raise ValueError(f"shape={shape!r} is not one of {SHAPES}.")
        # inf: a run bounded by neither max_epochs nor max_steps (trainer.max_time alone): it decays by time only.
        self.total_steps = math.inf if math.isinf(total_steps) else max(1, int(total_steps))
        self.shape = shape
        self.power = float(power)
        self.min_lr = float(min_lr)
        self.warmup_steps = max(0, int(warmup_steps))
        self.warmup_start = float(warmup_start)
        # The share of the time budget used (segkit.callbacks.TimeBudget sets it; 0 without a time limit).
        self.time_progress = 0.0
        # Per group: the step from which it trains (None: held at rate 0), and its warm-up from there.
        self.group_start: list[int | None] = [0] * len(optimizer.param_groups)
        self.group_warmup_steps: list[int] = [0] * len(optimizer.param_groups)
        super().__init__(optimizer, last_epoch)

    def progress(self) -> float:
        decay_steps = max(1, self.total_steps - self.warmup_steps)  # inf - w = inf: no decay by steps
        by_steps = (self.last_epoch - self.warmup_steps) / decay_steps
        return min(1.0, max(0.0, by_steps, float(self.time_progress)))

    def _warmup(self) -> float:
        step = self.last_epoch
        if step >= self.warmup_steps:
            return 1.0
        return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps

    def group_factor(self, index: int) -> float:
        """The factor of group `index` at the current step: 0 while held, its warm-up ramp, then 1."""
        start = self.group_start[index]
        if start is None or self.last_epoch < start:
            return 0.0
        warmup = self.group_warmup_steps[index]
        return 1.0 if warmup <= 0 else min(1.0, (self.last_epoch - start + 1) / warmup)

    def get_lr(self) -> list[float]:
        warmup, t = self._warmup(), self.progress()
        if self.shape == "poly":
            rates = [base * warmup * (1.0 - t) ** self.power for base in self.base_lrs]
        else:
            cosine = (1.0 + math.cos(math.pi * t)) / 2.0
            rates = [warmup * (self.min_lr + (base - self.min_lr) * cosine) for base in self.base_lrs]
        return [rate * self.group_factor(i) for i, rate in enumerate(rates)]  # x 1.0 exactly for most groups

    def hold_groups(self, indices: list[int], warmup_steps: int = 0) -> None:
        """Groups `indices` (of the optimizer's param_groups) get rate 0 until `release_held_groups`, then ramp
        linearly to the schedule's rate over `warmup_steps` optimizer steps."""
        for index in indices:
            self.group_start[index] = None
            self.group_warmup_steps[index] = max(0, int(warmup_steps))
        self._apply_rates()

    def release_held_groups(self) -> list[int]:
        """The held groups train from the current step on (the one the next optimizer step takes); returns their
        indices (none when nothing was held)."""
        released = [i for i, start in enumerate(self.group_start) if start is None]
        for index in released:
            self.group_start[index] = self.last_epoch
        if released:
            self._apply_rates()
        return released

    def set_time_progress(self, progress: float) -> None:
        """The share of the time budget used: the optimizer's rate follows it now (the step count stays)."""
        self.time_progress = min(1.0, max(0.0, float(progress)))
        self._apply_rates()

    def _apply_rates(self) -> None:
        """The optimizer's rates set to `get_lr()` at the current step."""
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Known keys only: a state saved by the earlier torch-scheduler schedules (SequentialLR) restores its step
        count and learning rates, not its sub-schedulers."""
        super().load_state_dict({k: v for k, v in state_dict.items() if k in self.__dict__})


def poly(
    optimizer: Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int = 0, warmup_start: float = 0.1
) -> WarmupDecayLR:
    """lr * (1 - t/T)^power after a linear warm-up: the DeepLab / MMSegmentation default. `scheduler=poly`; configs
    give it as a partial, which the LightningModule completes with the optimizer and the run's total steps.

    Args:
        optimizer: the optimizer whose rates it sets, every optimizer step.
        total_steps: the run's optimizer steps (inf: a run bounded by `trainer.max_time` alone decays by time).
        power: the decay's exponent.
        warmup_steps: steps of linear warm-up from `warmup_start` x lr to lr.
        warmup_start: the warm-up's first factor.

    Example:
        >>> import torch
        >>> from segkit.training.schedules import poly
        >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> schedule = poly(optimizer, total_steps=10, power=1.0)
        >>> for _ in range(5):
        ...     optimizer.step()
        ...     schedule.step()
        >>> round(optimizer.param_groups[0]["lr"], 6)
        0.5
    """
    return WarmupDecayLR(
        optimizer, total_steps, "poly", power=power, warmup_steps=warmup_steps, warmup_start=warmup_start
    )


def cosine(
    optimizer: Optimizer, total_steps: int, min_lr: float = 0.0, warmup_steps: int = 0, warmup_start: float = 0.1
) -> WarmupDecayLR:
    """Cosine from lr down to `min_lr` after a linear warm-up. `scheduler=cosine`; a partial, as `poly` is.

    Args:
        optimizer: the optimizer whose rates it sets, every optimizer step.
        total_steps: the run's optimizer steps (inf: a run bounded by `trainer.max_time` alone decays by time).
        min_lr: the last rate (an absolute learning rate).
        warmup_steps: steps of linear warm-up from `warmup_start` x lr to lr.
        warmup_start: the warm-up's first factor.

    Example:
        >>> import torch
        >>> from segkit.training.schedules import cosine
        >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> schedule = cosine(optimizer, total_steps=10, min_lr=0.1)
        >>> for _ in range(10):
        ...     optimizer.step()
        ...     schedule.step()
        >>> round(optimizer.param_groups[0]["lr"], 6)
        0.1
    """
    return WarmupDecayLR(
        optimizer, total_steps, "cosine", min_lr=min_lr, warmup_steps=warmup_steps, warmup_start=warmup_start
    )
