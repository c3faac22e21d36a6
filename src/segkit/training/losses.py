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


# ------------------------------------------------------------------ per-class cores and the losses built on them
# Each core below takes per-class probabilities (N, C, P), the per-class ground truth `fg` (N, C, P) in {0, 1} and a
# validity mask broadcastable to it, and knows nothing of the softmax: the multiclass losses feed it softmax
# probabilities and one-hot masks; a sigmoid task (binary, multi-label) can feed it sigmoid probabilities and its own
# per-class masks unchanged.


def _one_hot_valid(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, ...]:
    """Softmax probabilities (B, C, H*W) in float32, the one-hot ground truth (B, C, H*W) with ignored pixels all
    zero, and the validity mask (B, 1, H*W) as floats."""
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1).flatten(2)
    valid = target != ignore_index
    onehot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2).flatten(2).float()
    valid = valid.flatten(1).unsqueeze(1).float()
    return probs, onehot * valid, valid


def _mean_where(values: torch.Tensor, weights: torch.Tensor, dim: int, empty: torch.Tensor) -> torch.Tensor:
    """The mean of `values` over the entries where `weights` is 1, along `dim`; `empty` where there is none. By
    arithmetic masking, so the host never waits for the device."""
    count = weights.sum(dim)
    mean = (values * weights).sum(dim) / count.clamp_min(1)
    return torch.where(count > 0, mean, empty)


def lovasz_jaccard_gradient(fg_sorted: torch.Tensor) -> torch.Tensor:
    """The gradient of the Lovász extension of the Jaccard loss at errors sorted in decreasing order (Berman et al.
    2018, Algorithm 1), along the last dimension: the increments of the Jaccard loss of the growing sets of the
    largest errors. `fg_sorted` is the ground truth (1 foreground, 0 not) in the order of the sorted errors."""
    foreground = fg_sorted.sum(-1, keepdim=True)
    # The first i sorted pixels counted as mispredicted: foreground pixels among them leave the intersection,
    # background ones join the union.
    intersection = foreground - fg_sorted.cumsum(-1)
    union = foreground + (1 - fg_sorted).cumsum(-1)  # >= 1 from the first pixel on
    jaccard_loss = 1 - intersection / union
    return torch.diff(jaccard_loss, dim=-1, prepend=torch.zeros_like(jaccard_loss[..., :1]))


def lovasz_jaccard(errors: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The Lovász extension of the Jaccard loss of each class, (N, C), from per-pixel errors in [0, 1] (N, C, P).

    Invalid pixels are sorted after every valid one (error -1) and count with error 0 and no foreground, so that
    their position adds nothing and the valid pixels see exactly the increments they would see alone: the same value
    and gradient as selecting the valid pixels, without the host sync that boolean selection costs."""
    valid = valid.expand_as(errors)
    errors_sorted, order = torch.where(valid > 0, errors, -1.0).sort(dim=-1, descending=True)
    fg_sorted = (fg * valid).gather(-1, order)
    grad = lovasz_jaccard_gradient(fg_sorted)
    return (errors_sorted.clamp_min(0) * grad).sum(-1)


class LovaszSoftmaxLoss(nn.Module):
    """Lovász-Softmax (Berman et al., 2018): the Lovász extension of each class's Jaccard loss (1 - IoU) at the
    errors |1[y = c] - p_c| of the softmax probabilities, a convex surrogate that equals 1 - IoU for one-hot
    predictions and optimises the IoU itself, which suits rare classes and thin structures. Computed in float32,
    without a host sync; `ignore_index` pixels count for nothing. `loss=lovasz` (`loss=ce_lovasz` with CE).

    Args:
        ignore_index: mask value of pixels left out (`${data.ignore_index}`).
        classes: `present`: average over the classes in the ground truth (of the batch, or of each image with
            `per_image`); `all`: over every class, an absent one counting its false positives (its loss is then the
            largest probability given to it).
        per_image: the loss of each image (those with a labelled pixel), averaged, instead of one over the batch.

    Example:
        >>> import torch
        >>> from segkit.training.losses import LovaszSoftmaxLoss
        >>> target = torch.tensor([[[0, 1, 1], [2, 2, 255]]])
        >>> hard = torch.nn.functional.one_hot(torch.tensor([[[0, 1, 2], [2, 2, 0]]]), 3).permute(0, 3, 1, 2)
        >>> round(float(LovaszSoftmaxLoss()(hard * 100.0, target)), 4)  # 1 - mean IoU: (1 + 1/2 + 2/3) / 3
        0.2778
    """

    def __init__(self, ignore_index: int = 255, classes: str = "present", per_image: bool = False) -> None:
        super().__init__()
        if classes not in ("present", "all"):
            raise ValueError(f"LovaszSoftmaxLoss: classes must be 'present' or 'all', not {classes!r}.")
        self.ignore_index = ignore_index
        self.classes = classes
        self.per_image = per_image

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, onehot, valid = _one_hot_valid(logits, target, self.ignore_index)
        if not self.per_image:  # the batch as one image
            probs, onehot, valid = (t.transpose(0, 1).flatten(1).unsqueeze(0) for t in (probs, onehot, valid))
        losses = lovasz_jaccard((onehot - probs).abs(), onehot, valid)  # (N, C)
        zero = losses.new_zeros(())
        if self.classes == "present":
            per_image = _mean_where(losses, (onehot.sum(-1) > 0).float(), dim=1, empty=zero)
        else:
            per_image = losses.mean(1)
        labelled = (valid.sum((1, 2)) > 0).float()  # images with no labelled pixel count for nothing
        return _mean_where(per_image, labelled, dim=0, empty=zero)


def tversky_index(
    probs: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor, alpha: float, beta: float, smooth: float
) -> torch.Tensor:
    """The soft Tversky index of each class, (C,), summed over the batch and its pixels: (TP + smooth) /
    (TP + alpha FP + beta FN + smooth) with TP = sum p g, FP = sum p (1 - g), FN = sum (1 - p) g over valid pixels."""
    probs, fg = probs * valid, fg * valid
    dims = tuple(d for d in range(probs.dim()) if d != 1)
    tp = (probs * fg).sum(dims)
    fp = probs.sum(dims) - tp
    fn = fg.sum(dims) - tp
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


class TverskyLoss(nn.Module):
    """Tversky loss (Salehi et al., 2017): 1 - the soft Tversky index of each class, whose `alpha` weighs false
    positives and `beta` false negatives, averaged over the classes present in the batch's ground truth (over all when
    every pixel is ignored), like DiceLoss. beta > alpha favours recall, for small and thin structures a model would
    rather miss; alpha = beta = 0.5 is DiceLoss with twice the `smooth`. With `gamma` != 1, each class's term is
    raised to that power: the focal Tversky loss (Abraham & Khan, 2019, whose 1/gamma = 4/3 is `gamma: 0.75`).
    Computed in float32, without a host sync. `loss=tversky` in a config.

    Args:
        ignore_index: mask value of pixels left out (`${data.ignore_index}`).
        alpha: weight of the false positives.
        beta: weight of the false negatives.
        gamma: exponent of each class's 1 - index (1: plain Tversky; < 1 weighs the classes still poorly
            segmented more).
        smooth: added to the numerator and denominator of each class's index.

    Example:
        >>> import torch
        >>> from segkit.training.losses import DiceLoss, TverskyLoss
        >>> logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> dice = DiceLoss(smooth=2.0)(logits, target)
        >>> torch.allclose(TverskyLoss(alpha=0.5, beta=0.5, smooth=1.0)(logits, target), dice)
        True
    """

    def __init__(
        self,
        ignore_index: int = 255,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 1.0,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.alpha, self.beta, self.gamma, self.smooth = alpha, beta, gamma, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, onehot, valid = _one_hot_valid(logits, target, self.ignore_index)
        index = tversky_index(probs, onehot, valid, self.alpha, self.beta, self.smooth)
        # clamp: rounding can put the index a hair above 1, and a fractional power of a negative number is NaN.
        losses = (1 - index).clamp_min(0) ** self.gamma if self.gamma != 1 else 1 - index
        present = (onehot.sum((0, 2)) > 0).float()
        return _mean_where(losses, present, dim=0, empty=losses.mean())


class OhemCrossEntropyLoss(nn.Module):
    """Cross-entropy over the hard pixels only (online hard example mining, as in HRNet's and MMSegmentation's
    OHEM): a pixel is kept when the probability of its true class is below `thresh`, and the `min_kept` pixels of the
    batch with the lowest such probability are kept in any case; the loss is the mean over the kept pixels (weighted
    by `class_weights` as torch's cross-entropy weighs its mean). Unlike HRNet's threshold on the value of the
    `min_kept`-th probability, the hardest are taken by rank, so exactly `min_kept` are kept when ties or a batch
    smaller than `min_kept` would make it fewer. `ignore_index` pixels are never kept. Computed in float32, without a
    host sync. `loss=ohem` in a config.

    Args:
        ignore_index: mask value of pixels left out (`${data.ignore_index}`).
        thresh: pixels whose true class has a lower probability are kept (HRNet: 0.7); 1 keeps every pixel but
            those predicted with certainty, above 1 every pixel (plain cross-entropy).
        min_kept: the number of hardest pixels of the batch kept whatever their probability (HRNet: 100000 on
            Cityscapes crops of 3 x 512 x 1024 pixels; 0 for none).
        class_weights: one weight per class, or None for equal ones.

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
    ) -> None:
        super().__init__()
        if min_kept < 0:
            raise ValueError(f"OhemCrossEntropyLoss: min_kept must be >= 0, not {min_kept}.")
        self.ignore_index = ignore_index
        self.thresh = thresh
        self.min_kept = int(min_kept)
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weight)

    def hard_pixels(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The kept pixels, a bool tensor of the target's shape."""
        with torch.no_grad():
            valid = target != self.ignore_index
            safe_target = torch.where(valid, target, 0)
            p_true = logits.float().softmax(dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
            kept = valid & (p_true < self.thresh)
            count = min(self.min_kept, p_true.numel())  # from shapes: no host sync
            if count > 0:
                # Ignored pixels rank after every valid one (probability 2) and are masked out again below.
                hardest = torch.where(valid, p_true, 2.0).flatten().topk(count, largest=False).indices
                ranked = torch.zeros_like(kept).flatten().index_fill_(0, hardest, True).view_as(kept)
                kept = kept | (ranked & valid)
        return kept

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kept = self.hard_pixels(logits, target)
        safe_target = torch.where(kept, target, 0)
        losses = F.cross_entropy(logits.float(), safe_target, reduction="none")
        weights = kept.float()
        if self.class_weights is not None:
            weights = weights * self.class_weights[safe_target]
        return (losses * weights).sum() / weights.sum().clamp_min(torch.finfo(torch.float32).tiny)
