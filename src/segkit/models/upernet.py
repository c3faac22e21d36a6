"""UPerNet (Xiao et al., 2018), as MMSegmentation pairs it with Swin, ViT and ConvNeXt: a pyramid pooling module
on the deepest features, an FPN fusing every level top-down, all levels concatenated at the finest stride,
one classifier, logits upsampled to the input's size."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.base import SegmentationModel
from segkit.models.layers import (
    ConvBNReLU,
    adaptive_avg_pool,
    add_top_down,
    decoded_levels,
    neighbour_factors,
    upsample_by,
)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: the map averaged to 1x1, 2x2, 3x3, 6x6 bins, projected, upsampled back and
    concatenated with the map, then fused by a 3x3 convolution."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int]) -> None:
        super().__init__()
        self.pool_scales = [int(scale) for scale in pool_scales]
        self.stages = nn.ModuleList(ConvBNReLU(in_channels, channels, 1) for _ in self.pool_scales)
        self.bottleneck = ConvBNReLU(in_channels + len(self.pool_scales) * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(adaptive_avg_pool(x, scale)), size=size, mode="bilinear", align_corners=False)
            for scale, stage in zip(self.pool_scales, self.stages)
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerNetDecoder(nn.Module):
    def __init__(
        self,
        channels: list[int],
        strides: list[int],
        num_classes: int,
        decoder_channels: int = 256,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        min_stride: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.levels = decoded_levels(strides, min_stride)
        level_strides = [strides[i] for i in self.levels]
        self.level_strides = level_strides
        self.factors = neighbour_factors(level_strides)
        self.ppm = PyramidPooling(channels[self.levels[-1]], decoder_channels, pool_scales)
        self.laterals = nn.ModuleList(ConvBNReLU(channels[i], decoder_channels, 1) for i in self.levels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(decoder_channels, decoder_channels) for _ in self.levels[:-1])
        self.fuse = ConvBNReLU(len(self.levels) * decoder_channels, decoder_channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        maps = [features[i] for i in self.levels]
        laterals = [lateral(x) for lateral, x in zip(self.laterals, maps[:-1])] + [self.ppm(maps[-1])]
        add_top_down(laterals, self.factors)
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        finest = outs[0].shape[-2:]
        fused = [outs[0]] + [
            upsample_by(x, stride // self.level_strides[0], finest)
            for x, stride in zip(outs[1:], self.level_strides[1:])
        ]
        logits = self.classifier(self.dropout(self.fuse(torch.cat(fused, dim=1))))
        return upsample_by(logits, self.level_strides[0], size)


class UPerNet(SegmentationModel):
    """UPerNet (Xiao et al., 2018) over any backbone, as MMSegmentation pairs it with Swin, ViT and ConvNeXt: pyramid
    pooling on the deepest features, an FPN fusing every level at stride `min_stride` and coarser top-down, all
    levels concatenated at the finest of them, one classifier. `model=upernet` in a config.

    Args:
        backbone: the `Backbone`'s arguments, as `conf/backbone/*.yaml` gives them: `name` (any timm model with
            `features_only`), `pretrained`, `weights`, `out_indices`, `pyramid` and other `timm.create_model` keys.
        num_classes: classes the logits score, at least 2 (`${data.num_classes}`).
        in_channels: channels of the images, any number (`${data.in_channels}`).
        decoder_channels: width of every decoder layer (MMSegmentation uses 512 with Swin-T or ViT-B).
        pool_scales: the pyramid pooling's bins per side.
        min_stride: levels finer than this (a ResNet's stride-2 stem) are left out.
        dropout: dropout before the classifier.

    Returns logits `(B, num_classes, H, W)` for images `(B, in_channels, H, W)` in [0, 1], at the images' own
    size for any H and W.

    Example:
        >>> import torch
        >>> from segkit.models import UPerNet
        >>> net = UPerNet({"name": "resnet18"}, num_classes=3, decoder_channels=64).eval()
        >>> net(torch.rand(1, 3, 45, 61)).shape
        torch.Size([1, 3, 45, 61])
    """

    def __init__(
        self,
        backbone: dict,
        num_classes: int,
        in_channels: int = 3,
        decoder_channels: int = 256,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        min_stride: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(backbone, num_classes, in_channels)
        self.decoder = UPerNetDecoder(
            self.backbone.channels,
            self.backbone.strides,
            num_classes,
            int(decoder_channels),
            list(pool_scales),
            int(min_stride),
            dropout,
        )
