"""Each loss's view of the ground truth, for every task (segkit.task_kind): the multiclass losses compare softmax
probabilities with one-hot masks; binary and multi-label ones compare each channel's sigmoid probability with that
channel's 0/1 mask. Both come out as per-class tensors (B, C, H*W), so the region losses (Dice, Tversky, Lovász)
have one core for every task.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.task_kind import TASKS, TaskError, TaskKind


def task_of(loss: str, task: str, allowed: Sequence[str], fix: str = "") -> TaskKind:
    """The task a loss serves, refused (naming `fix`) where the combination makes no sense."""
    kind = TaskKind(task)
    if kind.name not in allowed:
        raise TaskError(f"{loss} does not apply to data.task={kind.name}: it takes {' or '.join(allowed)}. Fix: {fix}")
    return kind


class TaskLoss(nn.Module):
    """A loss that follows `data.task` (`task` in its config): `self.kind` after `set_task`, refused for a task
    outside `tasks` with `fix` as the way out."""

    tasks: tuple[str, ...] = TASKS
    fix = ""

    def set_task(self, task: str) -> None:
        self.kind = task_of(type(self).__name__, task, self.tasks, self.fix)


def sigmoid_targets(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (B, C, H*W) in float32, each channel's ground truth (B, C, H*W) in {0, 1} (0 where ignored) and
    the validity mask (B, C, H*W) as floats, from a binary task's class ids (B, H, W) or multi-label (B, C, H, W)."""
    if target.dim() == 3:  # binary: the positive class's id is 1
        target = target.unsqueeze(1)
    if target.shape[1] != logits.shape[1]:
        raise ValueError(
            f"Logits have {logits.shape[1]} channels but the masks {target.shape[1]}: a sigmoid loss needs one "
            "mask channel per output channel (binary: class ids, one channel; multilabel: one mask per label)."
        )
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    fg = ((target == 1) & valid).flatten(2).float()
    return logits.float().flatten(2), fg, valid.flatten(2).float()


def softmax_targets(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax probabilities (B, C, H*W) in float32, the one-hot ground truth (B, C, H*W) with ignored pixels all
    zero, and the validity mask (B, 1, H*W) as floats."""
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1).flatten(2)
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    onehot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2).flatten(2).float()
    valid = valid.flatten(1).unsqueeze(1).float()
    return probs, onehot * valid, valid


def class_probabilities(
    kind: TaskKind, logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities, ground truth, validity), each (B, C, H*W) or validity (B, 1, H*W): what the region losses
    compare, for the task's own activation."""
    if kind.sigmoid:
        logits, fg, valid = sigmoid_targets(logits, target, ignore_index)
        return logits.sigmoid(), fg, valid
    return softmax_targets(logits, target, ignore_index)


def element_weights(
    weights: torch.Tensor | None, kind: TaskKind, fg: torch.Tensor, counted: torch.Tensor
) -> torch.Tensor:
    """A sigmoid loss's weight of each element (B, C, P): `counted` (the valid, or kept, elements as floats) times
    one weight per class, binary's by the true class ([negative, positive]), multi-label's by channel."""
    if weights is None:
        return counted
    if kind.name == "binary":
        if weights.numel() != 2:
            raise ValueError(f"data.task=binary takes 2 class weights [negative, positive], not {weights.numel()}.")
        return counted * (weights[0] + (weights[1] - weights[0]) * fg)
    if weights.numel() != fg.shape[1]:
        raise ValueError(f"{weights.numel()} class weights for {fg.shape[1]} labels: give one weight per label.")
    return counted * weights.view(1, -1, 1)


def mean_where(values: torch.Tensor, weights: torch.Tensor, dim: int, empty: torch.Tensor) -> torch.Tensor:
    """The mean of `values` over the entries where `weights` is 1, along `dim`; `empty` where there is none. By
    arithmetic masking, so the host never waits for the device."""
    count = weights.sum(dim)
    mean = (values * weights).sum(dim) / count.clamp_min(1)
    return torch.where(count > 0, mean, empty)


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w l) / sum(w), 0 where every weight is 0 (every pixel ignored), without a host sync."""
    return (losses * weights).sum() / weights.sum().clamp_min(torch.finfo(torch.float32).tiny)
