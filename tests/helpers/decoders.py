"""The one list of decoders the tests run every decoder through: a new decoder gets all of it (tests/test_decoders.py:
sizes, channels, channels-last, backward, export; tests/test_transformer_backbones.py: every backbone family) by one
line here.

Each entry is the public model (`segkit.models`), the decoder it builds from the backbone's channels and strides,
and the options both take: narrow widths, so that the tests stay fast, given the backbone's strides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from segkit.models import FCN, FPN, DeepLabV3Plus, SegFormer, UNet, UPerNet
from segkit.models.base import SegmentationModel
from segkit.models.deeplabv3plus import DeepLabV3PlusDecoder
from segkit.models.fcn import FCNDecoder
from segkit.models.fpn import FPNDecoder
from segkit.models.segformer import SegFormerDecoder
from segkit.models.unet import UNetDecoder
from segkit.models.upernet import UPerNetDecoder


def unet_widths(strides: list[int]) -> list[int]:
    """One narrow width per halving of the deepest stride (five for stride 32)."""
    return [max(8, 64 // 2**i) for i in range(strides[-1].bit_length() - 1)]


@dataclass(frozen=True)
class Decoder:
    name: str
    model: type[SegmentationModel]
    decoder: type[nn.Module]
    options: Callable[[list[int]], dict[str, Any]]
    # What the public model alone takes (not its decoder): DeepLabV3+'s dilation of the backbone.
    model_options: dict[str, Any] = field(default_factory=dict)

    def strides(self, strides: list[int]) -> list[int]:
        """The feature strides of the public model on a backbone whose own strides are `strides` (dilated: capped)."""
        cap = self.model_options.get("output_stride") or max(strides)
        return [min(s, cap) for s in strides]

    def build(self, backbone: dict[str, Any], num_classes: int, in_channels: int, strides: list[int]):
        """The public model on `backbone` (whose feature strides are `strides`), with the test options."""
        return self.model(backbone, num_classes, in_channels, **self.options(strides), **self.model_options)

    def head(self, channels: list[int], strides: list[int], num_classes: int) -> nn.Module:
        """The decoder alone, for a backbone's `channels` and `strides`."""
        return self.decoder(channels, strides, num_classes, **self.options(strides))


DECODERS = [
    Decoder("fcn", FCN, FCNDecoder, lambda strides: {"variant": "8s", "head_channels": 32}),
    Decoder(
        "unet", UNet, UNetDecoder, lambda strides: {"decoder_channels": unet_widths(strides), "upsample": "transposed"}
    ),
    Decoder("upernet", UPerNet, UPerNetDecoder, lambda strides: {"decoder_channels": 32}),
    Decoder("segformer", SegFormer, SegFormerDecoder, lambda strides: {"embed_dim": 32}),
    Decoder(
        "deeplabv3plus",
        DeepLabV3Plus,
        DeepLabV3PlusDecoder,
        lambda strides: {"aspp_channels": 16, "low_level_channels": 8, "decoder_channels": 16},
        model_options={"output_stride": 16},  # the default: the shared tests run the dilated backbone
    ),
    Decoder("fpn", FPN, FPNDecoder, lambda strides: {"decoder_channels": 32, "segmentation_channels": 16}),
]
