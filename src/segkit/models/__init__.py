"""Fully convolutional segmentation models: a timm backbone, a decoder and a per-pixel head."""

from segkit.models.backbone import Backbone, UnknownBackboneError, UnsupportedBackboneError
from segkit.models.base import SegmentationModel
from segkit.models.deeplabv3plus import DeepLabV3Plus
from segkit.models.fcn import FCN
from segkit.models.fpn import FPN
from segkit.models.segformer import SegFormer
from segkit.models.unet import UNet
from segkit.models.upernet import UPerNet

__all__ = [
    "Backbone",
    "UnknownBackboneError",
    "UnsupportedBackboneError",
    "SegmentationModel",
    "FCN",
    "UNet",
    "UPerNet",
    "SegFormer",
    "DeepLabV3Plus",
    "FPN",
]
