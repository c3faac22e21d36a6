"""Segmentation losses. All take logits (B, C, H, W) and index masks (B, H, W), honour
`ignore_index`, and compute in float32 so that bf16/fp16 autocast cannot spoil them."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy, in float32, leaving `ignore_index` pixels out of the mean. `loss=ce` in a config.

    Args:
        ignore_index: mask value of pixels that count for nothing (`${data.ignore_index}`).
        class_weights: one weight per class (e.g. what `python check_data.py` suggests), or None for equal ones.
        label_smoothing: as in `torch.nn.functional.cross_entropy`, 0 for none.

    Example:
        >>> import torch
        >>> from segkit.training.losses import CrossEntropyLoss
        >>> loss = CrossEntropyLoss(ignore_index=255, class_weights=[0.5, 1.0, 1.0])
        >>> loss(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))).shape
        torch.Size([])
    """

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(),
            target,
            weight=self.class_weights,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )


class DiceLoss(nn.Module):
    """1 - soft Dice over the whole batch, averaged over the classes present in the batch's ground truth, so
    absent classes neither reward nor punish (over all classes when every pixel is ignored). No host sync.
    `loss=dice` in a config.

    Args:
        ignore_index: mask value of pixels left out (`${data.ignore_index}`).
        smooth: added to the numerator and denominator of each class's Dice.

    Example:
        >>> import torch
        >>> from segkit.training.losses import DiceLoss
        >>> target = torch.randint(0, 3, (2, 8, 8))
        >>> perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2) * 100.0
        >>> round(float(DiceLoss()(perfect, target)), 4)
        0.0
    """

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        probs = logits.float().softmax(dim=1)
        valid = target != self.ignore_index
        onehot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2).float()
        valid = valid.unsqueeze(1).float()
        probs, onehot = probs * valid, onehot * valid
        dims = (0, 2, 3)
        intersection = (probs * onehot).sum(dims)
        cardinality = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth)
        # The mean over the classes present (in the ground truth), or over all classes when none is (every pixel
        # ignored): by arithmetic masking, not boolean indexing and a Python `if` on a tensor, which would make the
        # host wait for the device on every training step.
        present = (onehot.sum(dims) > 0).to(dice.dtype)
        count = present.sum()
        mean_present = (dice * present).sum() / count.clamp_min(1)
        return 1 - torch.where(count > 0, mean_present, dice.mean())


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): cross-entropy scaled by (1 - p_t)^gamma, so that pixels already well classified
    count less; gamma=0 gives plain CE. `loss=focal` in a config.

    Args:
        ignore_index: mask value of pixels left out (`${data.ignore_index}`).
        gamma: the focusing exponent.
        alpha: one weight per class, or None.

    Example:
        >>> import torch
        >>> from segkit.training.losses import CrossEntropyLoss, FocalLoss
        >>> logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> torch.allclose(FocalLoss(gamma=0.0)(logits, target), CrossEntropyLoss()(logits, target))
        True
    """

    def __init__(self, ignore_index: int = 255, gamma: float = 2.0, alpha: Sequence[float] | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.gamma = gamma
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32) if alpha is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        safe_target = torch.where(valid, target, 0)
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.alpha is not None:
            loss = loss * self.alpha[safe_target]
        valid = valid.float()
        return (loss * valid).sum() / valid.sum().clamp_min(1.0)


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
