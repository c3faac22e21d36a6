"""Losses of whole regions, which weigh a class by its overlap rather than by its pixels (so a rare class or a thin
structure counts as much as a large one): Dice, Tversky and Lovász. Each has one core over per-class tensors
(B, C, P) from `targets.class_probabilities`, so it serves every task: softmax probabilities against one-hot masks
(multiclass), each channel's sigmoid probability against its own 0/1 mask (binary: the positive class; multilabel:
each label). Computed in float32, without a host sync; `ignore_index` pixels count for nothing.
"""

from __future__ import annotations

import torch

from segkit.training.losses.targets import (
    TaskLoss,
    class_probabilities,
    mean_where,
    sigmoid_targets,
    softmax_targets,
)


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


def mean_over_present(losses: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """The mean of per-class losses (C,) over the classes present in the batch's ground truth, so that absent
    classes neither reward nor punish; over all classes when none is (every pixel ignored, or no positive pixel)."""
    present = (fg.sum((0, 2)) > 0).float()
    return mean_where(losses, present, dim=0, empty=losses.mean())


class DiceLoss(TaskLoss):
    """1 - soft Dice over the whole batch, averaged over the classes present in the batch's ground truth, so
    absent classes neither reward nor punish (over all classes when none is). Binary: the positive class's Dice;
    multilabel: each label's. `loss=dice` in a config.

    Args:
        ignore_index: mask value of pixels left out (`${data.ignore_index}`).
        smooth: added to the numerator and denominator of each class's Dice.
        task: `${data.task}`.

    Example:
        >>> import torch
        >>> from segkit.training.losses import DiceLoss
        >>> target = torch.randint(0, 3, (2, 8, 8))
        >>> perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2) * 100.0
        >>> round(float(DiceLoss()(perfect, target)), 4)
        0.0
    """

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0, task: str = "multiclass") -> None:
        super().__init__()
        self.set_task(task)
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, fg, valid = class_probabilities(self.kind, logits, target, self.ignore_index)
        # Dice is Tversky with alpha = beta = 1/2, its numerator and denominator doubled.
        dice = tversky_index(probs, fg, valid, 0.5, 0.5, self.smooth / 2)
        return 1 - mean_over_present(dice, fg)


class TverskyLoss(TaskLoss):
    """Tversky loss (Salehi et al., 2017): 1 - the soft Tversky index of each class, whose `alpha` weighs false
    positives and `beta` false negatives, averaged over the classes present in the batch's ground truth (over all when
    none is), like DiceLoss. beta > alpha favours recall, for small and thin structures a model would rather miss;
    alpha = beta = 0.5 is DiceLoss with twice the `smooth`. With `gamma` != 1, each class's term is raised to that
    power: the focal Tversky loss (Abraham & Khan, 2019, whose 1/gamma = 4/3 is `gamma: 0.75`). `loss=tversky`.

    Args:
        ignore_index: mask value of pixels left out (`${data.ignore_index}`).
        alpha: weight of the false positives.
        beta: weight of the false negatives.
        gamma: exponent of each class's 1 - index (1: plain Tversky; < 1 weighs the classes still poorly
            segmented more).
        smooth: added to the numerator and denominator of each class's index.
        task: `${data.task}`.

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
        task: str = "multiclass",
    ) -> None:
        super().__init__()
        self.set_task(task)
        self.ignore_index = ignore_index
        self.alpha, self.beta, self.gamma, self.smooth = alpha, beta, gamma, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, fg, valid = class_probabilities(self.kind, logits, target, self.ignore_index)
        index = tversky_index(probs, fg, valid, self.alpha, self.beta, self.smooth)
        # clamp: rounding can put the index a hair above 1, and a fractional power of a negative number is NaN.
        losses = (1 - index).clamp_min(0) ** self.gamma if self.gamma != 1 else 1 - index
        return mean_over_present(losses, fg)


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
    """The Lovász extension of the Jaccard loss of each class, (N, C), at per-pixel errors (N, C, P): only their
    positive part counts (softmax errors |g - p| lie in [0, 1]; hinge errors 1 - s x below 0 are margins met).

    Invalid pixels are sorted after every positive error (error -1) and count with error 0 and no foreground, so
    that their position adds nothing and the valid pixels see exactly the increments they would see alone: the same
    value and gradient as selecting the valid pixels, without the host sync that boolean selection costs."""
    valid = valid.expand_as(errors)
    errors_sorted, order = torch.where(valid > 0, errors, -1.0).sort(dim=-1, descending=True)
    fg_sorted = (fg * valid).gather(-1, order)
    grad = lovasz_jaccard_gradient(fg_sorted)
    return (errors_sorted.clamp_min(0) * grad).sum(-1)


class LovaszLoss(TaskLoss):
    """Lovász losses (Berman et al., 2018): the Lovász extension of each class's Jaccard loss (1 - IoU), a convex
    surrogate that equals 1 - IoU for hard predictions and optimises the IoU itself, which suits rare classes and
    thin structures. Multiclass: Lovász-Softmax, at the errors |1[y = c] - p_c| of the softmax probabilities. Binary
    and multilabel: the Lovász hinge of each channel, at the hinge errors 1 - s x of its logit x (s = +1 for a
    positive pixel, -1 for a negative one). Computed in float32, without a host sync; `ignore_index` pixels count
    for nothing. `loss=lovasz` (`loss=ce_lovasz` with CE).

    Args:
        ignore_index: mask value of pixels left out (`${data.ignore_index}`).
        classes: `present`: average over the classes in the ground truth (of the batch, or of each image with
            `per_image`); `all`: over every class, an absent one counting its false positives.
        per_image: the loss of each image (those with a labelled pixel), averaged, instead of one over the batch.
        task: `${data.task}`.

    Example:
        >>> import torch
        >>> from segkit.training.losses import LovaszLoss
        >>> target = torch.tensor([[[0, 1, 1], [2, 2, 255]]])
        >>> hard = torch.nn.functional.one_hot(torch.tensor([[[0, 1, 2], [2, 2, 0]]]), 3).permute(0, 3, 1, 2)
        >>> round(float(LovaszLoss()(hard * 100.0, target)), 4)  # 1 - mean IoU: (1 + 1/2 + 2/3) / 3
        0.2778
    """

    def __init__(
        self, ignore_index: int = 255, classes: str = "present", per_image: bool = False, task: str = "multiclass"
    ) -> None:
        super().__init__()
        if classes not in ("present", "all"):
            raise ValueError(f"{type(self).__name__}: classes must be 'present' or 'all', not {classes!r}.")
        self.set_task(task)
        self.ignore_index = ignore_index
        self.classes = classes
        self.per_image = per_image

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind.sigmoid:
            logits, fg, valid = sigmoid_targets(logits, target, self.ignore_index)
            errors = 1 - logits * (2 * fg - 1)
        else:
            probs, fg, valid = softmax_targets(logits, target, self.ignore_index)
            errors = (fg - probs).abs()
        if not self.per_image:  # the batch as one image
            errors, fg, valid = (t.transpose(0, 1).flatten(1).unsqueeze(0) for t in (errors, fg, valid))
        losses = lovasz_jaccard(errors, fg, valid)  # (N, C)
        zero = losses.new_zeros(())
        if self.classes == "present":
            per_image = mean_where(losses, (fg.sum(-1) > 0).float(), dim=1, empty=zero)
        else:
            per_image = losses.mean(1)
        labelled = (valid.sum((1, 2)) > 0).float()  # images with no labelled pixel count for nothing
        return mean_where(per_image, labelled, dim=0, empty=zero)
