"""A timm `features_only` model as an encoder, with name checking and offline-friendly weight loading."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Sequence

import timm
import torch
from torch import nn


class UnknownBackboneError(ValueError):
    """The backbone name is not a timm model."""


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but could not be fetched (usually: no network)."""


def check_backbone_name(name: str) -> None:
    """Fail early, with the closest valid names, instead of deep inside timm."""
    arch = name.split(".", 1)[0]
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=6, cutoff=0.6)
    hint = f" Closest timm models: {', '.join(close)}." if close else ""
    # No single quotes: Hydra shows the repr of this message, which would escape them.
    raise UnknownBackboneError(
        f"Unknown backbone \"{name}\".{hint} Fix: set backbone.name to a timm model name; "
        f"search them with timm.list_models(\"*{arch[:4]}*\")."
    )


class Backbone(nn.Module):
    """Encoder returning a list of feature maps, shallow to deep, with their channels and strides.

    Images are expected in [0, 1]; they are normalised here with the backbone's own mean and std,
    so checkpoints, exports and predictions need no separate preprocessing step.
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        pretrained: bool = False,
        weights: str | None = None,
        out_indices: Sequence[int] | None = None,
        normalize: bool = True,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        check_backbone_name(name)
        kwargs = dict(features_only=True, in_chans=in_channels, **timm_kwargs)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"Backbone weights file '{path}' does not exist. Fix: point backbone.weights at a "
                    "timm/PyTorch state dict (.safetensors, .pth, .bin) or set backbone.weights=null."
                )
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
            pretrained = True
        self.encoder = _create(name, pretrained, kwargs)
        self.name = name
        self.channels: list[int] = list(self.encoder.feature_info.channels())
        self.strides: list[int] = list(self.encoder.feature_info.reduction())
        mean, std = _normalization(self.encoder.pretrained_cfg, in_channels) if normalize else (None, None)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return self.encoder(x)


def _create(name: str, pretrained: bool, kwargs: dict) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, ConnectionError) as err:
        if not pretrained or "pretrained_cfg_overlay" in kwargs:
            raise
        raise PretrainedWeightsUnavailable(
            f"Pretrained weights for backbone '{name}' could not be loaded ({type(err).__name__}). "
            "This machine is probably offline. Fix: set backbone.pretrained=false, or download the weights "
            "on a connected machine (they land in the Hugging Face cache, HF_HOME) and copy that cache here, "
            "or give a local file with backbone.weights=/path/to/weights.safetensors."
        ) from err
    except RuntimeError as err:
        if "features_only" not in str(err):
            raise
        raise ValueError(
            f"timm model '{name}' cannot return intermediate features (features_only). "
            "Fix: choose a CNN or hierarchical backbone such as resnet*, efficientnet_b*, convnext*."
        ) from err


def _normalization(pretrained_cfg: dict, in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's mean/std, averaged over channels when the input has another channel count."""
    mean = torch.tensor(pretrained_cfg.get("mean", (0.5,) * 3), dtype=torch.float32)
    std = torch.tensor(pretrained_cfg.get("std", (0.5,) * 3), dtype=torch.float32)
    if mean.numel() != in_channels:
        mean, std = mean.mean().repeat(in_channels), std.mean().repeat(in_channels)
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
