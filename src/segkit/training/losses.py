"""Segmentation losses. All take logits (B, C, H, W) and index masks (B, H, W), honour
`ignore_index`, and compute in float32 so that bf16/fp16 autocast cannot spoil them."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropyLoss(nn.Module):
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
    absent classes neither reward nor punish (over all classes when every pixel is ignored). No host sync."""

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
    """Focal loss (Lin et al., 2017): cross-entropy scaled by (1 - p_t)^gamma; gamma=0 gives plain CE."""

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
    """A weighted sum of losses, e.g. CE + Dice. Hydra builds the `losses` first; `weights` default to 1."""

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
