"""Fully convolutional segmentation models: a timm backbone, a decoder and a per-pixel head."""

from segkit.models.backbone import Backbone, UnknownBackboneError
from segkit.models.base import SegmentationModel
from segkit.models.fcn import FCN
from segkit.models.unet import UNet

__all__ = ["Backbone", "UnknownBackboneError", "SegmentationModel", "FCN", "UNet"]
