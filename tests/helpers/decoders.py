"""The one list of decoders the tests run every decoder through: a new decoder gets all of it (tests/test_decoders.py:
sizes, channels, channels-last, backward, export; tests/test_transformer_backbones.py: every backbone family) by one
line here.

Each entry is the public model (`segkit.models`), the decoder it builds from the backbone's channels and strides,
and the options both take: narrow widths, so that the tests stay fast, given the backbone's strides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from segkit.models import FCN, SegFormer, UNet, UPerNet
from segkit.models.base import SegmentationModel
from segkit.models.fcn import FCNDecoder
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

    def build(self, backbone: dict[str, Any], num_classes: int, in_channels: int, strides: list[int]):
        """The public model on `backbone` (whose feature strides are `strides`), with the test options."""
        return self.model(backbone, num_classes, in_channels, **self.options(strides))

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
]
