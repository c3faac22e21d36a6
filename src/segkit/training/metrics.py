"""Dataset-level segmentation scores from one confusion matrix.

A torchmetrics `Metric` accumulates the matrix (on the device, summed across processes at `compute()`);
every score derives from it, so IoU, Dice and accuracy always agree with each other. Multiclass and binary tasks
count one (C, C) matrix of class ids; a multi-label task one 2 x 2 matrix per label (its pixels with and without it).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from segkit.task_kind import TaskKind


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


class LabelConfusion(Metric):
    """A multi-label task's counts: for each label a 2 x 2 matrix (rows ground truth: without, with the label;
    columns prediction), (C, 2, 2). Ignored (and out-of-range) target values are not counted, label by label.
    Fixed sizes and no boolean indexing, like ConfusionMatrix."""

    full_state_update = False

    def __init__(self, num_labels: int, ignore_index: int | None = None) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.add_state("confmat", default=torch.zeros(num_labels, 2, 2, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds and target (B, C, H, W): 0/1 per label (target: or ignore_index)."""
        target = target.long()
        keep = (target == 0) | (target == 1)
        # Each (pixel, label) to its label's bin c * 4 + 2 * truth + prediction; the rest to an extra bin, dropped.
        label = torch.arange(self.num_labels, device=target.device).view(1, -1, 1, 1)
        index = torch.where(keep, label * 4 + 2 * target + preds.long().clamp(0, 1), self.num_labels * 4)
        counts = torch.zeros(self.num_labels * 4 + 1, dtype=torch.long, device=target.device)
        counts.scatter_add_(0, index.reshape(-1), torch.ones_like(index.reshape(-1)))
        self.confmat += counts[:-1].view(self.num_labels, 2, 2)

    def compute(self) -> torch.Tensor:
        return self.confmat


def confusion_metric(num_classes: int, ignore_index: int | None, task: str = "multiclass") -> Metric:
    """The counts a task's scores derive from: a (C, C) matrix, or multi-label's (C, 2, 2)."""
    if TaskKind(task).multilabel:
        return LabelConfusion(num_classes, ignore_index)
    return ConfusionMatrix(num_classes, ignore_index)


def scores_from_confusion(confmat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows are ground truth, columns predictions: a (C, C) matrix of class ids, or one 2 x 2 matrix per label
    (C, 2, 2) for a multi-label task. A class absent from both has NaN IoU/Dice and is left out of the means, as
    MMSegmentation does; precision is NaN for a class never predicted, recall for a class never present. A
    multi-label task's `pixel_acc` is the share of (pixel, label) decisions that are right."""
    confmat = confmat.double()
    if confmat.dim() == 3:
        tp, fn, fp = confmat[:, 1, 1], confmat[:, 1, 0], confmat[:, 0, 1]
        gt, pred = tp + fn, tp + fp
        correct, total = (tp + confmat[:, 0, 0]).sum(), confmat.sum()
    else:
        tp = confmat.diag()
        gt = confmat.sum(1)
        pred = confmat.sum(0)
        correct, total = tp.sum(), confmat.sum()
    union = gt + pred - tp
    iou = tp / union  # 0/0 -> NaN for absent classes
    dice = 2 * tp / (gt + pred)
    precision = tp / pred
    recall = tp / gt
    return {
        "mIoU": iou.nanmean(),
        "mDice": dice.nanmean(),
        "mPrecision": precision.nanmean(),
        "mRecall": recall.nanmean(),
        "pixel_acc": correct / total,
        "IoU": iou,
        "Dice": dice,
        "Precision": precision,
        "Recall": recall,
        "pixels": gt,
    }


POSITIVE_SCORES = ("IoU", "Dice", "Precision", "Recall")


def named_scores(
    prefix: str, scores: dict[str, torch.Tensor], class_names: list[str], task: str = "multiclass"
) -> dict[str, float]:
    """Flatten to the logged names: `val/mIoU`, `val/IoU/<class>`, ...; a binary task's headline scores are its
    positive class's: `val/IoU`, `val/Dice`, `val/Precision`, `val/Recall`."""
    flat = {f"{prefix}/{key}": float(scores[key]) for key in ("mIoU", "mDice", "mPrecision", "mRecall", "pixel_acc")}
    if task == "binary":
        flat.update({f"{prefix}/{key}": float(scores[key][1]) for key in POSITIVE_SCORES})
    for key in ("IoU", "Dice"):
        for name, value in zip(class_names, scores[key].tolist()):
            flat[f"{prefix}/{key}/{name}"] = value
    return flat
