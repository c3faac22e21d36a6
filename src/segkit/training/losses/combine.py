"""Losses made of losses."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


class WeightedSum(nn.Module):
    """A weighted sum of losses, e.g. CE + Dice (`loss=ce_dice`, the default). Hydra builds the `losses` first.

    Args:
        losses: the terms by name, each a loss of (logits, target).
        weights: a weight per name (a subset of `losses`); missing ones are 1.

    Example:
        >>> import torch
        >>> from segkit.training.losses import CrossEntropyLoss, DiceLoss, WeightedSum
        >>> loss = WeightedSum({"ce": CrossEntropyLoss(), "dice": DiceLoss()}, weights={"dice": 0.5})
        >>> loss.weights
        {'ce': 1.0, 'dice': 0.5}
        >>> loss(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).shape
        torch.Size([])
    """

    def __init__(self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        weights = dict(weights or {})
        unknown = set(weights) - set(losses)
        if unknown:
            raise ValueError(f"loss.weights names {sorted(unknown)}, which are not in loss.losses {sorted(losses)}.")
        self.losses = nn.ModuleDict(losses)
        self.weights = {name: float(weights.get(name, 1.0)) for name in losses}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * loss(logits, target) for name, loss in self.losses.items())
