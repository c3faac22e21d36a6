"""DeepLabV3+ (Chen et al., 2018): atrous spatial pyramid pooling (ASPP) on the deepest features of a backbone
dilated to output stride 8 or 16, a low-level skip from the stride-4 features, two 3x3 convolutions, one
classifier, logits upsampled to the input's size.

The dilation is timm's (`output_stride` passed to `timm.create_model`): CNNs take it; transformers cannot be
dilated and fail at start-up, naming the fix (`model.output_stride=32`: no dilation, ASPP on the deepest map at
its own stride)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from segkit.models.base import SegmentationModel
from segkit.models.layers import stride_ratio, upsample_by

OUTPUT_STRIDES = (8, 16, 32)  # 32: no dilation


def default_rates(stride: int) -> list[int]:
    """The paper's ASPP rates for the deepest stride: (6, 12, 18) at 16, doubled at 8, halved at 32."""
    return [max(1, rate * 16 // stride) for rate in (6, 12, 18)]


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: the map averaged to one pixel, a 1x1 convolution and ReLU, spread back over
    the map. No norm: a BatchNorm over one pixel per image fails in training at batch size 1 (and a norm over
    one pixel's channels adds little); the convolution has a bias instead."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.relu(self.conv(x.mean(dim=(-2, -1), keepdim=True)))
        # Bilinear upsampling of one pixel is that pixel everywhere: an expansion, exact for any (symbolic) size.
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """A 1x1 branch, one 3x3 branch per atrous rate and the image pooling branch, concatenated and projected by a
    1x1 conv-BN-ReLU (dropout after it)."""

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int], dropout: float = 0.1) -> None:
        super().__init__()
        self.rates = [int(rate) for rate in rates]
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels, 1)]
            + [conv_bn_relu(in_channels, channels, 3, rate) for rate in self.rates]
            + [ImagePooling(in_channels, channels)]
        )
        self.project = nn.Sequential(conv_bn_relu(len(self.branches) * channels, channels, 1), nn.Dropout2d(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the deepest map (rates by its stride unless given: `default_rates`); the result upsampled to the
    low-level map (the last at stride `low_level_stride`, else the finest at or above it) and concatenated with
    its `low_level_channels` projection; two 3x3 conv-BN-ReLU, a 1x1 classifier, upsampling to the input."""

    def __init__(
        self,
        channels: list[int],
        strides: list[int],
        num_classes: int,
        atrous_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        low_level_stride: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        deepest = strides[-1]
        self.rates = list(atrous_rates) if atrous_rates is not None else default_rates(deepest)
        candidates = [s for s in strides if s >= low_level_stride] or [min(strides)]
        self.low_level_stride = min(candidates)
        self.low_index = max(i for i, s in enumerate(strides) if s == self.low_level_stride)
        self.factor = stride_ratio(deepest, self.low_level_stride)
        self.aspp = ASPP(channels[-1], aspp_channels, self.rates, dropout)
        self.low_level = conv_bn_relu(channels[self.low_index], low_level_channels, 1)
        self.fuse = nn.Sequential(
            conv_bn_relu(aspp_channels + low_level_channels, decoder_channels),
            conv_bn_relu(decoder_channels, decoder_channels),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        low = self.low_level(features[self.low_index])
        context = upsample_by(self.aspp(features[-1]), self.factor, low.shape[-2:])
        logits = self.classifier(self.fuse(torch.cat([context, low], dim=1)))
        return upsample_by(logits, self.low_level_stride, size)


class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+ (Chen et al., 2018) over a timm encoder dilated to `output_stride`: ASPP (a 1x1 branch, 3x3
    branches at `atrous_rates`, image pooling) on the deepest features, fused with a 48-channel projection of the
    stride-4 features by two 3x3 convolutions, one classifier. `model=deeplabv3plus` in a config.

    Args:
        backbone: the `Backbone`'s arguments, as `conf/backbone/*.yaml` gives them: `name` (any timm model with
            `features_only`), `pretrained`, `weights`, `out_indices`, `pyramid` and other `timm.create_model` keys.
        num_classes: classes the logits score, at least 2 (`${data.num_classes}`).
        in_channels: channels of the images, any number (`${data.in_channels}`).
        output_stride: 16 (the paper's training setting), 8 (finer, about 4x the cost of the last stages) or 32
            (no dilation). 8 and 16 dilate the backbone's last stages through timm's `output_stride`, which CNNs
            (ResNet, EfficientNet, MobileNetV3, RegNet, ConvNeXt) take; a transformer (Swin, PVTv2, ViT) fails
            at start-up with the fix: `model.output_stride=32`.
        atrous_rates: the 3x3 branches' dilation rates; null: (6, 12, 18) scaled to the deepest stride, i.e.
            (12, 24, 36) at 8, (6, 12, 18) at 16, (3, 6, 9) at 32.
        aspp_channels: width of every ASPP branch and of its projection.
        low_level_channels: width of the stride-4 skip's projection (the paper: 48).
        decoder_channels: width of the two 3x3 convolutions after the concatenation.
        dropout: dropout after the ASPP projection.

    Returns logits `(B, num_classes, H, W)` for images `(B, in_channels, H, W)` in [0, 1], at the images' own
    size for any H and W.

    Example:
        >>> import torch
        >>> from segkit.models import DeepLabV3Plus
        >>> net = DeepLabV3Plus({"name": "resnet18"}, num_classes=3, aspp_channels=32, decoder_channels=32).eval()
        >>> net.backbone.strides
        [2, 4, 8, 16, 16]
        >>> net(torch.rand(1, 3, 45, 61)).shape
        torch.Size([1, 3, 45, 61])
    """

    def __init__(
        self,
        backbone: dict,
        num_classes: int,
        in_channels: int = 3,
        output_stride: int = 16,
        atrous_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        output_stride = int(output_stride)
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(
                f"model.output_stride={output_stride}: DeepLabV3+ runs at output stride 8 or 16 (dilated), or 32 "
                "(no dilation). Fix: model.output_stride=16 (or 8; 32 for a transformer backbone)."
            )
        if output_stride != 32:
            backbone = {**backbone, "output_stride": output_stride}
        super().__init__(backbone, num_classes, in_channels)
        self.output_stride = output_stride
        self.decoder = DeepLabV3PlusDecoder(
            self.backbone.channels,
            self.backbone.strides,
            num_classes,
            None if atrous_rates is None else [int(r) for r in atrous_rates],
            int(aspp_channels),
            int(low_level_channels),
            int(decoder_channels),
            dropout=dropout,
        )
