"""FCN (Long, Shelhamer & Darrell, 2015): score the deepest features, fuse skips, upsample to input size."""

from __future__ import annotations

import torch
from torch import nn

from segkit.models.base import SegmentationModel
from segkit.models.layers import ConvBNReLU, Upsample

VARIANTS = {"32s": 1, "16s": 2, "8s": 3}  # how many of the deepest feature levels are scored


class FCNDecoder(nn.Module):
    """`32s` scores the deepest map only; `16s` and `8s` add scores of the next one or two shallower
    maps after a 2x upsampling, as in the paper's skip architecture."""

    def __init__(
        self,
        channels: list[int],
        strides: list[int],
        num_classes: int,
        variant: str = "32s",
        upsample: str = "bilinear",
        head_channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"Unknown FCN variant '{variant}'. Fix: use one of {list(VARIANTS)}.")
        levels = VARIANTS[variant]
        if len(channels) < levels:
            raise ValueError(f"FCN-{variant} needs {levels} feature levels; the backbone gives {len(channels)}.")
        self.levels = levels
        self.head = nn.Sequential(ConvBNReLU(channels[-1], head_channels), nn.Dropout2d(dropout))
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        # Skip scorers and 2x upsamplers, deepest skip first.
        self.skip_scores = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in channels[-levels:-1][::-1])
        # Skips start silent: training begins from the coarse prediction, as in the paper.
        for score in self.skip_scores:
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
        skip_strides = strides[-levels:][::-1]
        self.skip_up = nn.ModuleList(
            Upsample(num_classes, deeper // shallower, upsample)
            for deeper, shallower in zip(skip_strides[:-1], skip_strides[1:])
        )
        self.final_up = Upsample(num_classes, skip_strides[-1], upsample, depthwise=True)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        deep_first = features[::-1]
        logits = self.classifier(self.head(deep_first[0]))
        for skip, score, up in zip(deep_first[1 : self.levels], self.skip_scores, self.skip_up):
            logits = up(logits, skip.shape[-2:]) + score(skip)
        return self.final_up(logits, size)


class FCN(SegmentationModel):
    def __init__(
        self,
        backbone: dict,
        num_classes: int,
        in_channels: int = 3,
        variant: str = "32s",
        upsample: str = "bilinear",
        head_channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(backbone, num_classes, in_channels)
        self.decoder = FCNDecoder(
            self.backbone.channels, self.backbone.strides, num_classes, variant, upsample, head_channels, dropout
        )
