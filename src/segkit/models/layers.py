"""Small building blocks shared by the decoders."""

from __future__ import annotations

import math
from typing import Sequence

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
        # covers the target) as given, and crop, by a negative padding: a slice would need the exporter to prove
        # that the map covers the target, which it cannot for every stride arithmetic (PVT's, say).
        return F.pad(x, (0, size[1] - w, 0, size[0] - h))
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        return x[..., : size[0], : size[1]]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def upsample_by(x: torch.Tensor, factor: int, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of a stride-s map by `factor` (s / the target's stride), cropped to `size`.

    Scaling by the exact factor keeps every level aligned with the image (a map at stride s covers
    s * ceil(H / s) >= H pixels, padding at the bottom and right); interpolating straight to `size` would
    stretch that overhang over the image.
    """
    if factor != 1:
        x = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    return fit_to(x, size)


def stride_ratio(deeper: int, shallower: int) -> int:
    """The integer upsampling factor between two feature strides."""
    if deeper % shallower:
        raise ValueError(
            f"Feature strides {shallower} and {deeper} are not integer multiples of each other; the decoders fuse "
            "maps whose strides double (4, 8, 16, 32). Fix: for a plain ViT keep backbone.pyramid on (the default), "
            "or choose backbone.out_indices whose strides are powers of two."
        )
    return deeper // shallower


def decoded_levels(strides: Sequence[int], min_stride: int) -> list[int]:
    """Indices of the features a head fuses: those at `min_stride` or coarser (all when none is)."""
    levels = [i for i, s in enumerate(strides) if s >= min_stride]
    return levels or list(range(len(strides)))


def neighbour_factors(level_strides: Sequence[int]) -> list[int]:
    """The upsampling factor from each level to the next finer one (an FPN's top-down steps)."""
    return [stride_ratio(deep, fine) for fine, deep in zip(level_strides[:-1], level_strides[1:])]


def add_top_down(laterals: list[torch.Tensor], factors: Sequence[int]) -> list[torch.Tensor]:
    """An FPN's top-down pathway, in place: from the coarsest level down, each level gets the coarser one added,
    upsampled by `factors` (`neighbour_factors`). Returns `laterals`."""
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + upsample_by(laterals[i], factors[i - 1], laterals[i - 1].shape[-2:])
    return laterals


def ceil_div(size: Sequence[int], stride: int) -> tuple[int, int]:
    """The size of a stride-`stride` map of an image of `size`."""
    return (-(-size[0] // stride), -(-size[1] // stride))


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """`F.adaptive_avg_pool2d(x, bins)` (the same bins, the same values) as products with averaging
    matrices: exported graphs keep H and W symbolic, and ONNX's rendering of adaptive pooling fails at sizes
    it did not see (a 2x2 map pooled to 6x6 bins, say)."""
    if bins == 1:
        return x.mean(dim=(-2, -1), keepdim=True)
    h, w = x.shape[-2], x.shape[-1]
    # einsum, not `@`: the exporter cannot prove the shape checks of a broadcast matmul for symbolic sizes.
    return torch.einsum("ih,bchw,jw->bcij", _bin_matrix(h, bins, x), x, _bin_matrix(w, bins, x))


def _bin_matrix(n, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, n): row i averages [floor(i n / bins), ceil((i + 1) n / bins)), PyTorch's adaptive bins."""
    i = torch.arange(bins, device=like.device).unsqueeze(1)
    j = torch.arange(n, device=like.device).unsqueeze(0)
    start = torch.div(i * n, bins, rounding_mode="floor")
    end = torch.div((i + 1) * n + bins - 1, bins, rounding_mode="floor")
    inside = ((j >= start) & (j < end)).to(like.dtype)
    return inside / inside.sum(dim=1, keepdim=True)


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
                channels,
                channels,
                kernel_size=2 * factor,
                stride=factor,
                padding=factor // 2,
                groups=groups,
                bias=False,
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
        raise ValueError(
            f"Backbone stride {value} is not a power of two; the UNet and FCN decoders need strides 2, 4, 8, ... "
            "Fix: for a plain ViT (one stride, such as 14) keep backbone.pyramid on (the default), which resamples "
            "its features to strides 4, 8, 16 and 32."
        )
    return exponent
