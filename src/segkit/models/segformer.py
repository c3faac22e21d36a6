"""SegFormer's all-MLP decoder (Xie et al., 2021): each level projected to one width by a per-pixel linear
layer, upsampled to the finest level, concatenated, fused by a 1x1 convolution with BN and ReLU, classified,
and upsampled to the input's size. Made for hierarchical transformers (MiT, whose nearest timm relative is
PVTv2), it takes any backbone's levels at stride `min_stride` (4) and coarser."""

from __future__ import annotations

import torch
from torch import nn

from segkit.models.base import SegmentationModel
from segkit.models.layers import ConvBNReLU, decoded_levels, stride_ratio, upsample_by


class SegFormerDecoder(nn.Module):
    def __init__(
        self,
        channels: list[int],
        strides: list[int],
        num_classes: int,
        embed_dim: int = 256,
        min_stride: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.levels = decoded_levels(strides, min_stride)
        self.level_strides = [strides[i] for i in self.levels]
        self.factors = [stride_ratio(s, self.level_strides[0]) for s in self.level_strides]
        self.proj = nn.ModuleList(nn.Conv2d(channels[i], embed_dim, 1) for i in self.levels)
        self.fuse = ConvBNReLU(len(self.levels) * embed_dim, embed_dim, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        finest = features[self.levels[0]].shape[-2:]
        maps = [
            upsample_by(proj(features[i]), factor, finest)
            for i, proj, factor in zip(self.levels, self.proj, self.factors)
        ]
        x = self.fuse(torch.cat(maps[::-1], dim=1))  # deepest first, as in the paper
        return upsample_by(self.classifier(self.dropout(x)), self.level_strides[0], size)


class SegFormer(SegmentationModel):
    """SegFormer's all-MLP head (Xie et al., 2021) over any backbone (`backbone=pvt_v2_b2` is the nearest to the
    paper's MiT-B2): every level at stride `min_stride` and coarser projected to `embed_dim`, upsampled to the finest
    of them, concatenated, fused by a 1x1 conv-BN-ReLU and classified. `model=segformer` in a config.

    Args:
        backbone: the `Backbone`'s arguments, as `conf/backbone/*.yaml` gives them: `name` (any timm model with
            `features_only`), `pretrained`, `weights`, `out_indices`, `pyramid` and other `timm.create_model` keys.
        num_classes: classes the logits score, at least 2 (`${data.num_classes}`).
        in_channels: channels of the images, any number (`${data.in_channels}`).
        embed_dim: the width every level is projected to (the paper: 256 for B0 and B1, 768 for B2 to B5).
        min_stride: levels finer than this are left out.
        dropout: dropout before the classifier.

    Returns logits `(B, num_classes, H, W)` for images `(B, in_channels, H, W)` in [0, 1], at the images' own
    size for any H and W.

    Example:
        >>> import torch
        >>> from segkit.models import SegFormer
        >>> net = SegFormer({"name": "resnet18"}, num_classes=3, embed_dim=64).eval()
        >>> net(torch.rand(1, 3, 45, 61)).shape
        torch.Size([1, 3, 45, 61])
    """

    def __init__(
        self,
        backbone: dict,
        num_classes: int,
        in_channels: int = 3,
        embed_dim: int = 256,
        min_stride: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(backbone, num_classes, in_channels)
        self.decoder = SegFormerDecoder(
            self.backbone.channels, self.backbone.strides, num_classes, int(embed_dim), int(min_stride), dropout
        )
