"""Dataset-level segmentation scores from one confusion matrix.

A torchmetrics `Metric` accumulates the matrix (on the device, summed across processes at `compute()`);
every score derives from it, so IoU, Dice and accuracy always agree with each other.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


def class_ids(scores: torch.Tensor) -> torch.Tensor:
    """argmax over the class dimension of (B, C, H, W) scores. On CPU an argmax across the channels of an NCHW
    tensor is ~15x slower than on a channels-last copy of it (91 ms against 7 ms for 8 x 4 x 256 x 256)."""
    return scores.contiguous(memory_format=torch.channels_last).argmax(dim=1)


class ConfusionMatrix(Metric):
    """Pixel counts, rows ground truth and columns prediction; ignored (and out-of-range) targets are not
    counted. Unlike torchmetrics' MulticlassConfusionMatrix it never drops pixels by boolean indexing (a host
    sync on GPU) and is several times faster on CPU: it runs on every training step."""

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        n = self.num_classes
        target = target.long()
        keep = (target >= 0) & (target < n)
        if self.ignore_index is not None and 0 <= self.ignore_index < n:
            keep &= target != self.ignore_index
        # Pixels that do not count go to an extra bin, n * n, which is then dropped: fixed sizes, no sync.
        index = torch.where(keep, target * n + preds.long(), n * n).reshape(-1)
        if index.is_cuda:
            counts = torch.zeros(n * n + 1, dtype=torch.long, device=index.device)
            counts.scatter_add_(0, index, torch.ones_like(index))
        else:
            counts = torch.bincount(index, minlength=n * n + 1)
        self.confmat += counts[: n * n].view(n, n)

    def compute(self) -> torch.Tensor:
        return self.confmat


def confusion_metric(num_classes: int, ignore_index: int | None) -> ConfusionMatrix:
    return ConfusionMatrix(num_classes, ignore_index)


def scores_from_confusion(confmat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows are ground truth, columns predictions. A class absent from both has NaN IoU/Dice and is
    left out of the means, as MMSegmentation does; precision is NaN for a class never predicted, recall
    for a class never present."""
    confmat = confmat.double()
    tp = confmat.diag()
    gt = confmat.sum(1)
    pred = confmat.sum(0)
    union = gt + pred - tp
    iou = tp / union  # 0/0 -> NaN for absent classes
    dice = 2 * tp / (gt + pred)
    precision = tp / pred
    recall = tp / gt
    total = confmat.sum()
    return {
        "mIoU": iou.nanmean(),
        "mDice": dice.nanmean(),
        "mPrecision": precision.nanmean(),
        "mRecall": recall.nanmean(),
        "pixel_acc": tp.sum() / total,
        "IoU": iou,
        "Dice": dice,
        "Precision": precision,
        "Recall": recall,
        "pixels": gt,
    }


def named_scores(prefix: str, scores: dict[str, torch.Tensor], class_names: list[str]) -> dict[str, float]:
    """Flatten to the logged names: `val/mIoU`, `val/IoU/<class>`, ..."""
    flat = {f"{prefix}/{key}": float(scores[key]) for key in ("mIoU", "mDice", "mPrecision", "mRecall", "pixel_acc")}
    for key in ("IoU", "Dice"):
        for name, value in zip(class_names, scores[key].tolist()):
            flat[f"{prefix}/{key}/{name}"] = value
    return flat
