"""Segmentation losses. Each takes logits (B, C, H, W) and the batch's masks, follows `data.task` (multiclass:
softmax against class ids; binary and multilabel: a sigmoid per channel against 0/1 masks), honours `ignore_index`,
and computes in float32 so that bf16/fp16 autocast cannot spoil it. `pixelwise`: cross-entropy, binary
cross-entropy, focal, OHEM; `region`: Dice, Tversky, Lovász; `combine`: weighted sums (`loss=ce_dice`)."""

from segkit.training.losses.combine import WeightedSum
from segkit.training.losses.pixelwise import BinaryCrossEntropyLoss, CrossEntropyLoss, FocalLoss, OhemCrossEntropyLoss
from segkit.training.losses.region import (
    DiceLoss,
    LovaszLoss,
    TverskyLoss,
    lovasz_jaccard,
    lovasz_jaccard_gradient,
    tversky_index,
)

__all__ = [
    "BinaryCrossEntropyLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "LovaszLoss",
    "OhemCrossEntropyLoss",
    "TverskyLoss",
    "WeightedSum",
    "lovasz_jaccard",
    "lovasz_jaccard_gradient",
    "tversky_index",
]
