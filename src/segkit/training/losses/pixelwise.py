"""Losses of each pixel on its own: cross-entropy (softmax, or binary cross-entropy per sigmoid channel), focal and
OHEM. Each follows `task` (`${data.task}` in its config): logits (B, C, H, W) against class ids (B, H, W) for
multiclass and binary (one logit channel), or (B, C, H, W) 0/1 masks for multilabel; `ignore_index` pixels count for
nothing, and everything is computed in float32 so that bf16/fp16 autocast cannot spoil it.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.training.losses.targets import TaskLoss, element_weights, sigmoid_targets, weighted_mean


def _weights_buffer(module: nn.Module, name: str, values: Sequence[float] | None) -> None:
    module.register_buffer(name, torch.tensor(values, dtype=torch.float32) if values is not None else None)


class CrossEntropyLoss(TaskLoss):
    """Pixel-wise cross-entropy in float32, leaving `ignore_index` pixels out of the mean. `loss=ce` in a config.
    For a sigmoid task (binary, multilabel) it is the binary cross-entropy of each channel (`loss=bce`).

    Args:
        ignore_index: mask value of pixels that count for nothing (`${data.ignore_index}`).
        class_weights: one weight per class (e.g. what `python check_data.py` suggests; binary: [negative,
            positive], weighing each pixel by its true class; multilabel: one per label), or None for equal ones.
        label_smoothing: as in `torch.nn.functional.cross_entropy`, 0 for none (sigmoid tasks: the 0/1 targets
            move by half of it towards 1/2).
        task: `${data.task}`: multiclass (softmax), binary or multilabel (sigmoid).

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
        task: str = "multiclass",
    ) -> None:
        super().__init__()
        self.set_task(task)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        _weights_buffer(self, "class_weights", class_weights)
        _weights_buffer(self, "positive_weight", None)  # BinaryCrossEntropyLoss's pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind.sigmoid:
            return self.binary_cross_entropy(logits, target)
        return F.cross_entropy(
            logits.float(),
            target,
            weight=self.class_weights,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )

    def binary_cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, fg, valid = sigmoid_targets(logits, target, self.ignore_index)
        soft = fg * (1 - self.label_smoothing) + self.label_smoothing / 2
        losses = F.binary_cross_entropy_with_logits(logits, soft, reduction="none", pos_weight=self.positive_weight)
        return weighted_mean(losses, element_weights(self.class_weights, self.kind, fg, valid))


class BinaryCrossEntropyLoss(CrossEntropyLoss):
    """Binary cross-entropy of each sigmoid channel (`loss=bce`): `CrossEntropyLoss` for binary and multi-label
    tasks, with torch's `pos_weight` besides; a multiclass task is refused (its classes exclude each other: loss=ce).

    Args:
        ignore_index: mask value of pixels that count for nothing (`${data.ignore_index}`).
        class_weights: binary: [negative, positive] weights by true class; multilabel: one per label; or None.
        pos_weight: the weight of the positive term of every channel (one number, or one per channel), as in
            `torch.nn.BCEWithLogitsLoss`: above 1 favours recall of a rare positive class.
        label_smoothing: the 0/1 targets move by half of it towards 1/2.
        task: `${data.task}`: binary or multilabel.

    Example:
        >>> import torch
        >>> from segkit.training.losses import BinaryCrossEntropyLoss
        >>> logits, target = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))
        >>> reference = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target.float())
        >>> torch.allclose(BinaryCrossEntropyLoss(task="binary")(logits, target), reference)
        True
    """

    tasks = ("binary", "multilabel")
    fix = "loss=ce for exclusive classes (a softmax over them), or data.task=binary or multilabel."

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        pos_weight: float | Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        task: str = "binary",
    ) -> None:
        super().__init__(ignore_index, class_weights, label_smoothing, task)
        if pos_weight is not None:
            values = [pos_weight] if isinstance(pos_weight, (int, float)) else list(pos_weight)
            self.positive_weight = torch.tensor(values, dtype=torch.float32).view(1, -1, 1)


class FocalLoss(TaskLoss):
    """Focal loss (Lin et al., 2017): cross-entropy scaled by (1 - p_t)^gamma, so that pixels already well classified
    count less; gamma=0 gives plain CE (binary CE for a sigmoid task). `loss=focal` in a config.

    Args:
        ignore_index: mask value of pixels left out (`${data.ignore_index}`).
        gamma: the focusing exponent.
        alpha: one weight per class (binary: [negative, positive] by true class, as RetinaNet's alpha = 0.25 is
            [0.75, 0.25]; multilabel: one per label), or None.
        task: `${data.task}`.

    Example:
        >>> import torch
        >>> from segkit.training.losses import CrossEntropyLoss, FocalLoss
        >>> logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> torch.allclose(FocalLoss(gamma=0.0)(logits, target), CrossEntropyLoss()(logits, target))
        True
    """

    def __init__(
        self,
        ignore_index: int = 255,
        gamma: float = 2.0,
        alpha: Sequence[float] | None = None,
        task: str = "multiclass",
    ) -> None:
        super().__init__()
        self.set_task(task)
        self.ignore_index = ignore_index
        self.gamma = gamma
        _weights_buffer(self, "alpha", alpha)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind.sigmoid:
            logits, fg, valid = sigmoid_targets(logits, target, self.ignore_index)
            log_p = -F.binary_cross_entropy_with_logits(logits, fg, reduction="none")  # log p_t
            weights = element_weights(self.alpha, self.kind, fg, valid)
        else:
            valid = (target != self.ignore_index).float()
            safe_target = torch.where(valid > 0, target, 0)
            log_p = F.log_softmax(logits.float(), dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
            weights = valid if self.alpha is None else valid * self.alpha[safe_target]
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        return (loss * weights).sum() / valid.sum().clamp_min(1.0)  # weights scale pixels, the mean counts them


class OhemCrossEntropyLoss(TaskLoss):
    """Cross-entropy over the hard pixels only (online hard example mining, as in HRNet's and MMSegmentation's
    OHEM): a pixel is kept when the probability of its true class is below `thresh`, and the `min_kept` pixels of the
    batch with the lowest such probability are kept in any case; the loss is the mean over the kept pixels (weighted
    by `class_weights` as torch's cross-entropy weighs its mean). Unlike HRNet's threshold on the value of the
    `min_kept`-th probability, the hardest are taken by rank, so exactly `min_kept` are kept when ties or a batch
    smaller than `min_kept` would make it fewer. `ignore_index` pixels are never kept. For a sigmoid task, each
    (pixel, channel) is an element: its true label's probability is p or 1 - p, and its loss the binary
    cross-entropy. Computed in float32, without a host sync. `loss=ohem` in a config.

    Args:
        ignore_index: mask value of pixels left out (`${data.ignore_index}`).
        thresh: pixels whose true class has a lower probability are kept (HRNet: 0.7); 1 keeps every pixel but
            those predicted with certainty, above 1 every pixel (plain cross-entropy).
        min_kept: the number of hardest pixels of the batch kept whatever their probability (HRNet: 100000 on
            Cityscapes crops of 3 x 512 x 1024 pixels; 0 for none).
        class_weights: one weight per class (as CrossEntropyLoss's), or None for equal ones.
        task: `${data.task}`.

    Example:
        >>> import torch
        >>> from segkit.training.losses import CrossEntropyLoss, OhemCrossEntropyLoss
        >>> logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> hard = OhemCrossEntropyLoss(thresh=0.7, min_kept=16)  # 16 of 128 kept in any case
        >>> bool(hard(logits, target) > CrossEntropyLoss()(logits, target))  # the mean of the worst pixels
        True
        >>> torch.allclose(OhemCrossEntropyLoss(thresh=1.1)(logits, target), CrossEntropyLoss()(logits, target))
        True
    """

    def __init__(
        self,
        ignore_index: int = 255,
        thresh: float = 0.7,
        min_kept: int = 100_000,
        class_weights: Sequence[float] | None = None,
        task: str = "multiclass",
    ) -> None:
        super().__init__()
        if min_kept < 0:
            raise ValueError(f"OhemCrossEntropyLoss: min_kept must be >= 0, not {min_kept}.")
        self.set_task(task)
        self.ignore_index = ignore_index
        self.thresh = thresh
        self.min_kept = int(min_kept)
        _weights_buffer(self, "class_weights", class_weights)

    def hardest(self, p_true: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The kept elements (bool, p_true's shape) from the true label's probability of each."""
        kept = valid & (p_true < self.thresh)
        count = min(self.min_kept, p_true.numel())  # from shapes: no host sync
        if count > 0:
            # Ignored elements rank after every valid one (probability 2) and are masked out again below.
            hardest = torch.where(valid, p_true, 2.0).flatten().topk(count, largest=False).indices
            ranked = torch.zeros_like(kept).flatten().index_fill_(0, hardest, True).view_as(kept)
            kept = kept | (ranked & valid)
        return kept

    def hard_pixels(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The kept pixels of a multiclass batch, a bool tensor of the target's shape."""
        with torch.no_grad():
            valid = target != self.ignore_index
            safe_target = torch.where(valid, target, 0)
            p_true = logits.float().softmax(dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
            return self.hardest(p_true, valid)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind.sigmoid:
            logits, fg, valid = sigmoid_targets(logits, target, self.ignore_index)
            with torch.no_grad():
                p = logits.sigmoid()
                kept = self.hardest(torch.where(fg > 0, p, 1 - p), valid > 0)
            losses = F.binary_cross_entropy_with_logits(logits, fg, reduction="none")
            return weighted_mean(losses, element_weights(self.class_weights, self.kind, fg, kept.float()))
        kept = self.hard_pixels(logits, target)
        safe_target = torch.where(kept, target, 0)
        losses = F.cross_entropy(logits.float(), safe_target, reduction="none")
        weights = kept.float()
        if self.class_weights is not None:
            weights = weights * self.class_weights[safe_target]
        return weighted_mean(losses, weights)
