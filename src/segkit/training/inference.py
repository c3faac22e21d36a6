"""Inference modes: how a trained network turns an image batch into class probabilities at the image's size.

- whole: one pass over the whole image; with `scales`, the image is resized first and the logits resized
  back to the original size before the argmax.
- slide: windows of `crop_size` every `stride` pixels, logits of overlapping windows averaged (as in
  MMSegmentation); an image smaller than a window is padded, and the padding cut off again.
- test-time augmentation: every scale in `scales`, each also flipped horizontally when `flip`; the task's
  probabilities (softmax, or sigmoid for binary and multi-label tasks), resized to the image, are averaged.

Binary and multi-label predictions are the probabilities at or above `threshold`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.config.checks import ConfigError
from segkit.task_kind import TaskKind

MODES = ("whole", "slide")
MULTICLASS = TaskKind("multiclass")


class Inference:
    """How a network turns an image batch into class probabilities `(B, num_classes, H, W)` at the images' size:
    one pass (whole), windows (slide), and test-time augmentation over scales and flips in either. evaluate.py and
    predict.py build one from `conf/inference/*.yaml` (`build_inference`); training validates with one plain pass.

    Args:
        mode: "whole" (the image at once) or "slide" (windows of `crop_size` every `stride`, their logits averaged;
            an image smaller than a window is padded and the padding cut off).
        crop_size: (H, W) of the windows, for slide.
        stride: (H, W) steps between windows; by default two thirds of a window.
        scales: the image is resized by each, the logits resized back; their softmax probabilities are averaged.
        flip: also every scale flipped horizontally.
        threshold: binary and multi-label tasks: a label is predicted where its probability reaches it.

    Example:
        >>> import torch
        >>> from segkit.models import UNet
        >>> from segkit.training.inference import Inference
        >>> net = UNet({"name": "resnet18"}, num_classes=3).eval()
        >>> tta = Inference(mode="slide", crop_size=(32, 32), scales=[0.75, 1.0], flip=True)
        >>> tta(net, torch.rand(1, 3, 45, 61)).shape
        torch.Size([1, 3, 45, 61])
        >>> tta.predict(net, torch.rand(1, 3, 45, 61)).shape  # class ids
        torch.Size([1, 45, 61])
    """

    def __init__(
        self,
        mode: str = "whole",
        crop_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        threshold: float = 0.5,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"inference.mode={mode!r} is not one of {MODES}.")
        if mode == "slide" and not crop_size:
            raise ValueError("inference.mode=slide needs inference.crop_size (H, W) (it defaults to data.crop_size).")
        self.mode = mode
        self.crop_size = (int(crop_size[0]), int(crop_size[1])) if crop_size else None
        # MMSegmentation's configs slide 512-pixel windows by 341: two thirds of a window.
        default_stride = [max(1, (2 * c) // 3) for c in self.crop_size] if self.crop_size else None
        self.stride = tuple(int(s) for s in (stride or default_stride)) if mode == "slide" else None
        self.scales = [float(s) for s in scales] or [1.0]
        self.flip = flip
        if not 0.0 < float(threshold) < 1.0:
            raise ConfigError(
                f"inference.threshold={threshold} must lie strictly between 0 and 1. Fix: e.g. inference.threshold=0.5."
            )
        self.threshold = float(threshold)

    @property
    def is_plain(self) -> bool:
        """One forward pass of the whole image: logits are the network's own (and a loss can be computed)."""
        return self.mode == "whole" and self.scales == [1.0] and not self.flip

    def __repr__(self) -> str:
        return (
            f"Inference(mode={self.mode}, crop_size={self.crop_size}, stride={self.stride}, scales={self.scales}, "
            f"flip={self.flip}, threshold={self.threshold})"
        )

    @torch.no_grad()
    def predict(self, net: nn.Module, images: torch.Tensor, task: TaskKind = MULTICLASS) -> torch.Tensor:
        """The task's prediction (segkit.task_kind): class ids (B, H, W), or multi-label's (B, C, H, W) 0/1."""
        return task.decide(self(net, images, task), self.threshold)

    @torch.no_grad()
    def __call__(self, net: nn.Module, images: torch.Tensor, task: TaskKind = MULTICLASS) -> torch.Tensor:
        """Class probabilities (B, num_classes, H, W), float32 (a binary task's: the negative and the positive
        class's, from its one output channel)."""
        size = images.shape[-2:]
        total, passes = None, 0
        for scale in self.scales:
            scaled = (
                images
                if scale == 1.0
                else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
            )
            for flipped in (False, True) if self.flip else (False,):
                logits = self.logits(net, scaled.flip(-1) if flipped else scaled)
                if flipped:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != size:
                    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
                probs = task.probabilities(logits)
                total = probs if total is None else total + probs
                passes += 1
        return total / passes

    def logits(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return net(images) if self.mode == "whole" else self._slide(net, images)

    def _slide(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        (ch, cw), (sh, sw) = self.crop_size, self.stride
        h, w = images.shape[-2:]
        padded = F.pad(images, (0, max(cw - w, 0), 0, max(ch - h, 0)))
        hp, wp = padded.shape[-2:]
        rows = math.ceil(max(hp - ch, 0) / sh) + 1
        cols = math.ceil(max(wp - cw, 0) / sw) + 1
        total = count = None
        for r in range(rows):
            for c in range(cols):
                y, x = min(r * sh, hp - ch), min(c * sw, wp - cw)
                out = net(padded[..., y : y + ch, x : x + cw]).float()
                if total is None:
                    total = padded.new_zeros((images.shape[0], out.shape[1], hp, wp), dtype=torch.float32)
                    count = padded.new_zeros((1, 1, hp, wp), dtype=torch.float32)
                total[..., y : y + ch, x : x + cw] += out
                count[..., y : y + ch, x : x + cw] += 1
        return (total / count)[..., :h, :w]


def build_inference(cfg: dict | None, data: dict) -> Inference:
    """The inference of an `inference` config (none: plain whole-image passes); slide's window defaults to the
    training crop (`data["crop_size"]`).

    Args:
        cfg: the `inference` config as a dict (`Inference`'s arguments), or None.
        data: the data config (a checkpoint's own, for evaluate.py and predict.py).

    Example:
        >>> from segkit.training.inference import build_inference
        >>> build_inference({"mode": "slide"}, {"crop_size": [64, 96]})
        Inference(mode=slide, crop_size=(64, 96), stride=(42, 64), scales=[1.0], flip=False, threshold=0.5)
    """
    cfg = dict(cfg or {})
    if cfg.get("mode") == "slide" and not cfg.get("crop_size"):
        cfg["crop_size"] = data.get("crop_size")
    return Inference(**cfg)
