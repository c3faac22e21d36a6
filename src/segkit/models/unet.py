"""UNet (Ronneberger et al., 2015) over a timm encoder: upsample, concatenate the skip, convolve."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from segkit.models.base import SegmentationModel
from segkit.models.layers import ConvBNReLU, Upsample, log2_int


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, upsample: str) -> None:
        super().__init__()
        self.up = Upsample(in_channels, 2, upsample)
        self.convs = nn.Sequential(
            ConvBNReLU(in_channels + skip_channels, out_channels), ConvBNReLU(out_channels, out_channels)
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int], skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x, size)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class UNetDecoder(nn.Module):
    """One block per halving of the stride, from the deepest stride down to full resolution.

    A block concatenates the encoder feature of its stride when there is one; blocks finer than
    the shallowest feature (stride 2 for ResNets, 4 for ConvNeXt) have no skip.
    """

    def __init__(
        self,
        channels: list[int],
        strides: list[int],
        num_classes: int,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        upsample: str = "bilinear",
    ) -> None:
        super().__init__()
        n_blocks = log2_int(strides[-1])
        if len(decoder_channels) != n_blocks:
            raise ValueError(
                f"The backbone's deepest stride is {strides[-1]}, so the UNet decoder needs {n_blocks} blocks, "
                f"but model.decoder_channels has {len(decoder_channels)} entries. "
                f"Fix: give {n_blocks} widths, e.g. {[max(16, 256 // 2**i) for i in range(n_blocks)]}."
            )
        # The last feature at each stride is the skip for that stride.
        self.skip_index = {stride: i for i, stride in enumerate(strides)}
        self.block_strides = [strides[-1] // 2 ** (i + 1) for i in range(n_blocks)]
        in_ch = channels[-1]
        blocks = []
        for stride, out_ch in zip(self.block_strides, decoder_channels):
            skip_ch = channels[self.skip_index[stride]] if stride in self.skip_index else 0
            blocks.append(DecoderBlock(in_ch, skip_ch, out_ch, upsample))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, num_classes, kernel_size=1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x = features[-1]
        for stride, block in zip(self.block_strides, self.blocks):
            index = self.skip_index.get(stride)
            skip = features[index] if index is not None else None
            target = skip.shape[-2:] if skip is not None else _ceil_div(size, stride)
            x = block(x, target, skip)
        return self.head(x)


def _ceil_div(size: tuple[int, int], stride: int) -> tuple[int, int]:
    return (-(-size[0] // stride), -(-size[1] // stride))


class UNet(SegmentationModel):
    """UNet (Ronneberger et al., 2015) over a timm encoder: one decoder block per halving of the stride, each
    upsampling, concatenating the encoder feature of its stride when there is one, and two 3x3 conv-BN-ReLU; a 1x1
    head at full resolution. `model=unet` in a config.

    Args:
        backbone: the `Backbone`'s arguments, as `conf/backbone/*.yaml` gives them: `name` (any timm model with
            `features_only`), `pretrained`, `weights`, `out_indices`, `pyramid` and other `timm.create_model` keys.
        num_classes: classes the logits score, at least 2 (`${data.num_classes}`).
        in_channels: channels of the images, any number (`${data.in_channels}`).
        decoder_channels: one width per block, deepest first: as many as halvings of the backbone's deepest stride
            (five for stride 32; the error message suggests a list for other backbones).
        upsample: "bilinear", or "transposed" (learned transposed convolutions initialised to bilinear).

    Returns logits `(B, num_classes, H, W)` for images `(B, in_channels, H, W)` in [0, 1], at the images' own
    size for any H and W.

    Example:
        >>> import torch
        >>> from segkit.models import UNet
        >>> net = UNet({"name": "resnet18"}, num_classes=4, in_channels=1, decoder_channels=[64, 32, 16, 16, 8])
        >>> net.eval()(torch.rand(1, 1, 45, 61)).shape
        torch.Size([1, 4, 45, 61])
    """

    def __init__(
        self,
        backbone: dict,
        num_classes: int,
        in_channels: int = 3,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        upsample: str = "bilinear",
    ) -> None:
        super().__init__(backbone, num_classes, in_channels)
        self.decoder = UNetDecoder(
            self.backbone.channels, self.backbone.strides, num_classes, list(decoder_channels), upsample
        )
