"""Learning-rate schedules stepped per iteration, built from torch's own schedulers (the optimizers themselves
are torch.optim classes, named in conf/optimizer/).

Configs give them as partials; the LightningModule completes them with the optimizer and the
run's total number of optimizer steps, which only the Trainer knows.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, PolynomialLR, SequentialLR


def _with_warmup(optimizer: Optimizer, main: LRScheduler, warmup_steps: int, warmup_start: float) -> LRScheduler:
    if warmup_steps <= 0:
        return main
    warmup = LinearLR(optimizer, start_factor=warmup_start, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, main], milestones=[warmup_steps])


def poly(
    optimizer: Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int = 0, warmup_start: float = 0.1
) -> LRScheduler:
    """lr * (1 - t/T)^power after a linear warm-up: the DeepLab / MMSegmentation default."""
    decay_steps = max(1, total_steps - max(warmup_steps, 0))
    main = PolynomialLR(optimizer, total_iters=decay_steps, power=power)
    return _with_warmup(optimizer, main, warmup_steps, warmup_start)


def cosine(
    optimizer: Optimizer, total_steps: int, min_lr: float = 0.0, warmup_steps: int = 0, warmup_start: float = 0.1
) -> LRScheduler:
    decay_steps = max(1, total_steps - max(warmup_steps, 0))
    main = CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=min_lr)
    return _with_warmup(optimizer, main, warmup_steps, warmup_start)
