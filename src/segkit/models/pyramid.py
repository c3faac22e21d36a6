"""A plain ViT as a multi-scale encoder: the simple feature pyramid of ViTDet (Li et al., 2022) and BEiT's
segmentation neck (Bao et al., 2021).

A plain ViT keeps one stride (its patch size) in every block. Features of evenly spaced blocks are resampled
to strides 4, 8, 16 and 32: learned upsampling (2x2 transposed convolutions) for the strides finer than the
patch, identity at it, max pooling for the coarser ones. The decoders then see a pyramid as a CNN gives them:
the UNet gets real skips, FCN-8s fuses strides 8, 16 and 32, UPerNet and SegFormer get four levels.

Patch sizes that are not powers of two (14) are resampled to the same strides: the learned ops bring the map
to the nearest power-of-two step (14 -> 3.5, 7, 14, 28), and a bilinear rescale by the remaining factor
(16/14) lands it on stride 4, 8, 16, 32 exactly, aligned with the image.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from segkit.models.layers import ceil_div, fit_to

PYRAMID_STRIDES = (4, 8, 16, 32)


def evenly_spaced_blocks(depth: int, count: int = len(PYRAMID_STRIDES)) -> list[int]:
    """One block index (0-based) per level, spread evenly over the depth, the last block included:
    12 -> [2, 5, 8, 11]; fewer blocks than levels repeat (2 -> [0, 0, 1, 1])."""
    if depth < 1:
        raise ValueError(f"A ViT of depth {depth} has no blocks to take features from.")
    return [max(0, round((i + 1) * depth / count) - 1) for i in range(count)]


def _resampler(channels: int, steps: int) -> nn.Module:
    """`steps` > 0: that many 2x learned upsamplings (norm + GELU between them, as in ViTDet); 0: identity;
    < 0: that many 2x max poolings."""
    if steps == 0:
        return nn.Identity()
    if steps < 0:
        return nn.Sequential(*[nn.MaxPool2d(2, ceil_mode=True) for _ in range(-steps)])
    layers: list[nn.Module] = [nn.ConvTranspose2d(channels, channels, 2, stride=2)]
    for _ in range(steps - 1):
        layers += [LayerNorm2d(channels), nn.GELU(), nn.ConvTranspose2d(channels, channels, 2, stride=2)]
    return nn.Sequential(*layers)


class SimplePyramid(nn.Module):
    """Maps `len(PYRAMID_STRIDES)` same-stride feature maps (shallow block first) to strides 4, 8, 16, 32."""

    def __init__(self, channels: int, stride: int, strides: Sequence[int] = PYRAMID_STRIDES) -> None:
        super().__init__()
        self.stride = int(stride)
        self.strides = [int(s) for s in strides]
        steps = [round(math.log2(self.stride / s)) for s in self.strides]
        self.resample = nn.ModuleList(_resampler(channels, n) for n in steps)
        # What each level's map still needs after the learned ops: a rescale by `stride / 2**steps / s`.
        self.rescale = [Fraction(self.stride, s) / Fraction(2) ** n for s, n in zip(self.strides, steps)]
        self.channels = [int(channels)] * len(self.strides)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
        """`features`: one map per level at the ViT's stride; `size`: the (padded) image size."""
        out = []
        for x, resample, rescale, stride in zip(features, self.resample, self.rescale, self.strides):
            x = resample(x)
            if rescale != 1:
                h, w = x.shape[-2:]
                num, den = rescale.numerator, rescale.denominator
                x = F.interpolate(
                    x,
                    size=((h * num + den - 1) // den, (w * num + den - 1) // den),
                    mode="bilinear",
                    align_corners=False,
                )
            out.append(fit_to(x, ceil_div(size, stride)))
        return out
