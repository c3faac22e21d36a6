"""What every segmentation model shares: backbone -> decoder -> logits at the input's size."""

from __future__ import annotations

import torch
from torch import nn

from segkit.models.backbone import Backbone


class SegmentationModel(nn.Module):
    """Subclasses build `self.decoder` from `self.backbone.channels/strides`; it maps
    `(features, input_size)` to logits of exactly `input_size`. Images a backbone must pad (to a multiple of
    a window, say) are decoded at the padded size and the logits cropped, so every model returns
    `(B, num_classes, H, W)` for any H, W. `num_classes` is the number of output channels: one per class, or one
    for a binary task (the positive class's logit, segkit.task_kind)."""

    decoder: nn.Module

    def __init__(self, backbone: dict, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes (the output channels) must be at least 1, got {num_classes}.")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.backbone = Backbone(**backbone, in_channels=in_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"Expected images of shape (B, {self.in_channels}, H, W), got {tuple(images.shape)}. "
                "Fix: make data.in_channels match the images."
            )
        size = (images.shape[-2], images.shape[-1])
        # The backbone pads images (bottom and right) to a size it takes: decode that size, crop it back.
        padded = self.backbone.padded_size(size)
        logits = self.decoder(self.backbone(images), padded)
        return logits if padded == size else logits[..., : size[0], : size[1]]

    @property
    def channels_last_problem(self) -> str | None:
        """Why this network must not run in channels-last memory format (None: it may)."""
        return self.backbone.channels_last_problem

    @property
    def dynamic_export_problem(self) -> str | None:
        """Why this network cannot be exported for every image size (None: it can)."""
        return self.backbone.dynamic_export_problem
