"""Dataset-level segmentation scores from one confusion matrix.

torchmetrics accumulates the matrix (on the device, summed across processes at `compute()`);
every score derives from it, so IoU, Dice and accuracy always agree with each other.
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


def confusion_metric(num_classes: int, ignore_index: int | None) -> MulticlassConfusionMatrix:
    # validate_args=False: argument checks would sync the host with the device on every step.
    return MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)


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
