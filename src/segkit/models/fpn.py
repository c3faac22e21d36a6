"""The semantic FPN head (Kirillov et al., 2019: Panoptic FPN's semantic branch): a feature pyramid (1x1 laterals
on every level from stride 4, a top-down pathway, 3x3 smoothing), then per level a "segmentation block" (3x3
conv-norm-ReLU and 2x upsampling, repeated until stride 4), the levels summed (or concatenated), dropout, one
classifier at stride 4, logits upsampled to the input's size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.base import SegmentationModel
from segkit.models.layers import (
    ConvBNReLU,
    add_top_down,
    decoded_levels,
    fit_to,
    log2_int,
    neighbour_factors,
    stride_ratio,
    upsample_by,
)

MERGES = ("sum", "cat")


class SegmentationBlock(nn.Module):
    """`upsamplings` times a 3x3 conv-BN-ReLU and a 2x bilinear upsampling (one conv and none for the finest level)."""

    def __init__(self, in_channels: int, out_channels: int, upsamplings: int) -> None:
        super().__init__()
        self.upsamplings = upsamplings
        widths = [in_channels] + [out_channels] * max(upsamplings, 1)
        self.convs = nn.ModuleList(ConvBNReLU(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
            if self.upsamplings:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return fit_to(x, size)


class FPNDecoder(nn.Module):
    def __init__(
        self,
        channels: list[int],
        strides: list[int],
        num_classes: int,
        decoder_channels: int = 256,
        segmentation_channels: int = 128,
        merge: str = "sum",
        min_stride: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if merge not in MERGES:
            raise ValueError(f"Unknown FPN merge '{merge}'. Fix: model.merge=sum or model.merge=cat.")
        self.merge = merge
        self.levels = decoded_levels(strides, min_stride)
        self.level_strides = [strides[i] for i in self.levels]
        self.factors = neighbour_factors(self.level_strides)
        # 2x upsamplings from each level to the finest.
        finest = self.level_strides[0]
        self.upsamplings = [log2_int(stride_ratio(s, finest)) for s in self.level_strides]
        self.laterals = nn.ModuleList(nn.Conv2d(channels[i], decoder_channels, 1) for i in self.levels)
        self.smooth = nn.ModuleList(nn.Conv2d(decoder_channels, decoder_channels, 3, padding=1) for _ in self.levels)
        self.blocks = nn.ModuleList(
            SegmentationBlock(decoder_channels, segmentation_channels, n) for n in self.upsamplings
        )
        self.dropout = nn.Dropout2d(dropout)
        merged = segmentation_channels * (len(self.levels) if merge == "cat" else 1)
        self.classifier = nn.Conv2d(merged, num_classes, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        laterals = add_top_down([lateral(features[i]) for lateral, i in zip(self.laterals, self.levels)], self.factors)
        finest = laterals[0].shape[-2:]
        maps = [block(smooth(x), finest) for block, smooth, x in zip(self.blocks, self.smooth, laterals)]
        x = torch.cat(maps, dim=1) if self.merge == "cat" else torch.stack(maps).sum(dim=0)
        return upsample_by(self.classifier(self.dropout(x)), self.level_strides[0], size)


class FPN(SegmentationModel):
    """The semantic FPN head (Kirillov et al., 2019, Panoptic FPN's semantic branch) over any backbone: 1x1 laterals
    on every level at stride `min_stride` and coarser, a top-down pathway, 3x3 smoothing, then per level 3x3
    conv-BN-ReLU blocks with 2x upsampling until the finest level, the levels summed (or concatenated), one
    classifier there. `model=fpn` in a config.

    Args:
        backbone: the `Backbone`'s arguments, as `conf/backbone/*.yaml` gives them: `name` (any timm model with
            `features_only`), `pretrained`, `weights`, `out_indices`, `pyramid` and other `timm.create_model` keys.
        num_classes: classes the logits score, at least 2 (`${data.num_classes}`).
        in_channels: channels of the images, any number (`${data.in_channels}`).
        decoder_channels: width of the pyramid (laterals, top-down pathway, smoothing; the paper: 256).
        segmentation_channels: width of the segmentation blocks (the paper: 128).
        merge: "sum" (the paper) or "cat" (concatenation: the classifier sees every level apart).
        min_stride: levels finer than this (a ResNet's stride-2 stem) are left out.
        dropout: dropout before the classifier.

    Returns logits `(B, num_classes, H, W)` for images `(B, in_channels, H, W)` in [0, 1], at the images' own
    size for any H and W.

    Example:
        >>> import torch
        >>> from segkit.models import FPN
        >>> net = FPN({"name": "resnet18"}, num_classes=3, decoder_channels=32, segmentation_channels=16).eval()
        >>> net.decoder.upsamplings  # 2x upsamplings of the levels at strides 4, 8, 16, 32
        [0, 1, 2, 3]
        >>> net(torch.rand(1, 3, 45, 61)).shape
        torch.Size([1, 3, 45, 61])
    """

    def __init__(
        self,
        backbone: dict,
        num_classes: int,
        in_channels: int = 3,
        decoder_channels: int = 256,
        segmentation_channels: int = 128,
        merge: str = "sum",
        min_stride: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(backbone, num_classes, in_channels)
        self.decoder = FPNDecoder(
            self.backbone.channels,
            self.backbone.strides,
            num_classes,
            int(decoder_channels),
            int(segmentation_channels),
            str(merge),
            int(min_stride),
            dropout,
        )
