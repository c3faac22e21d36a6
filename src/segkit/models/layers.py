"""Small building blocks shared by the decoders."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def fit_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring a feature map to `size`: crop when it is larger (as FCN does), interpolate otherwise.

    Upsampling a stride-s map by 2 gives at least the size of the stride-s/2 map for any input
    size, so cropping is the usual case; interpolation covers backbones with unusual padding.
    """
    h, w = x.shape[-2:]
    if torch.compiler.is_exporting():
        # An exported graph keeps H and W symbolic, so it cannot branch on them: take the usual case (the map
        # covers the target) as given, and crop.
        torch._check(h >= size[0])
        torch._check(w >= size[1])
        return x[..., : size[0], : size[1]]
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        return x[..., : size[0], : size[1]]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Upsample(nn.Module):
    """Upsampling by an integer factor, to an exact target size.

    `bilinear` interpolates; `transposed` is a learned transposed convolution initialised to
    bilinear interpolation (as in the FCN paper), so both modes start from the same function.
    """

    MODES = ("bilinear", "transposed")

    def __init__(self, channels: int, factor: int, mode: str = "bilinear", depthwise: bool = False) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Unknown upsample mode '{mode}'. Fix: use one of {self.MODES}.")
        self.deconv = None
        if mode == "transposed":
            groups = channels if depthwise else 1
            self.deconv = nn.ConvTranspose2d(
                channels, channels, kernel_size=2 * factor, stride=factor, padding=factor // 2,
                groups=groups, bias=False,
            )
            self.deconv.weight.data.copy_(_bilinear_kernel(channels, factor, groups))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.deconv is None:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return fit_to(self.deconv(x), size)


def _bilinear_kernel(channels: int, factor: int, groups: int) -> torch.Tensor:
    """Weights of a transposed convolution that performs bilinear upsampling, channel by channel."""
    k = 2 * factor
    center = factor - 0.5
    grid = torch.arange(k, dtype=torch.float32)
    filt = 1 - (grid - center).abs() / factor
    kernel = filt[:, None] * filt[None, :]
    weight = torch.zeros(channels, channels // groups, k, k)
    if groups == 1:
        weight[range(channels), range(channels)] = kernel
    else:
        weight[:, 0] = kernel
    return weight


def log2_int(value: int) -> int:
    exponent = round(math.log2(value))
    if 2**exponent != value:
        raise ValueError(f"Backbone stride {value} is not a power of two; the decoders need strides 2, 4, 8, ...")
    return exponent
