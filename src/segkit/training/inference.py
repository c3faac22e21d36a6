"""Inference modes: how a trained network turns an image batch into class probabilities at the image's size.

- whole: one pass over the whole image; with `scales`, the image is resized first and the logits resized
  back to the original size before the argmax.
- slide: windows of `crop_size` every `stride` pixels, logits of overlapping windows blended (`blend`: averaged as
  in MMSegmentation, or weighted by a Gaussian as in nnU-Net, or a linear ramp); an image smaller than a window is
  padded, and the padding cut off again. One engine blends in-memory images and images read from disk in rows
  (`stream`, segkit.training.windows), so both give the same masks.
- test-time augmentation: every scale in `scales`, each also flipped horizontally when `flip`; the task's
  probabilities (softmax, or sigmoid for binary and multi-label tasks), resized to the image, are averaged. Under
  slide, each window is augmented and its averaged probabilities are blended.

An ensemble (or anything else) can take an `Inference`'s place on windows by offering its two window methods,
`window_scores` and `blended_probabilities`.

Binary and multi-label predictions are the probabilities at or above `threshold`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.config.checks import ConfigError
from segkit.task_kind import TaskKind
from segkit.training.windows import BLENDS, blend_rows, blend_weight

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
        blend: the weight of a window's scores: "mean" (equal), "gaussian" (nnU-Net's, sigma 1/8 of the window),
            "linear" (a ramp falling to the edges).
        window_above: predict.py and evaluate.py: images with more pixels than this squared are read and predicted
            window by window (segkit.reports.large_images).
        window_batch: windows per forward pass.

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
        blend: str = "mean",
        window_above: int = 4096,
        window_batch: int = 8,
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
        if blend not in BLENDS:
            raise ConfigError(
                f"inference.blend={blend!r} is not one of {', '.join(BLENDS)}. Fix: inference.blend=gaussian."
            )
        self.blend = blend
        if int(window_above) < 1 or int(window_batch) < 1:
            raise ConfigError(
                f"inference.window_above={window_above} and the window batch {window_batch} must be >= 1. "
                "Fix: e.g. inference.window_above=4096."
            )
        self.window_above = int(window_above)
        self.window_batch = int(window_batch)

    @property
    def is_plain(self) -> bool:
        """One forward pass of the whole image: logits are the network's own (and a loss can be computed)."""
        return self.mode == "whole" and self.scales == [1.0] and not self.flip

    def __repr__(self) -> str:
        return (
            f"Inference(mode={self.mode}, crop_size={self.crop_size}, stride={self.stride}, scales={self.scales}, "
            f"flip={self.flip}, threshold={self.threshold}, blend={self.blend})"
        )

    @torch.no_grad()
    def predict(self, net: nn.Module, images: torch.Tensor, task: TaskKind = MULTICLASS) -> torch.Tensor:
        """The task's prediction (segkit.task_kind): class ids (B, H, W), or multi-label's (B, C, H, W) 0/1."""
        return task.decide(self(net, images, task), self.threshold)

    @torch.no_grad()
    def __call__(self, net: nn.Module, images: torch.Tensor, task: TaskKind = MULTICLASS) -> torch.Tensor:
        """Class probabilities (B, num_classes, H, W), float32 (a binary task's: the negative and the positive
        class's, from its one output channel)."""
        if self.mode == "slide":
            return self.blended_probabilities(self._slide(images, lambda w: self.window_scores(net, w, task)), task)
        return self._augmented(net, images, task)

    @property
    def averages(self) -> bool:
        """Test-time augmentation: several passes whose probabilities are averaged (else one plain pass)."""
        return self.scales != [1.0] or self.flip

    def window_scores(self, net: nn.Module, windows: torch.Tensor, task: TaskKind = MULTICLASS) -> torch.Tensor:
        """What is blended of a batch of windows (N, C_in, h, w): one plain pass's logits, or with test-time
        augmentation the window's averaged probabilities. With `blended_probabilities`, the windowed paths' one
        contact with the model: an object offering these two (an ensemble) can stand in for an `Inference`."""
        if not self.averages:
            return net(windows).float()
        return self._augmented(net, windows, task)

    def blended_probabilities(self, blended: torch.Tensor, task: TaskKind = MULTICLASS) -> torch.Tensor:
        """Probabilities (B, num_classes, H, W) from blended `window_scores`: the task's activation of blended
        logits, or blended probabilities as they are."""
        return blended if self.averages else task.probabilities(blended)

    def _augmented(self, net: nn.Module, images: torch.Tensor, task: TaskKind) -> torch.Tensor:
        """Every scale (and its flip) of whole images, their probabilities at the images' size averaged."""
        size = images.shape[-2:]
        total, passes = None, 0
        for scale in self.scales:
            scaled = (
                images
                if scale == 1.0
                else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
            )
            for flipped in (False, True) if self.flip else (False,):
                logits = net(scaled.flip(-1) if flipped else scaled)
                if flipped:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != size:
                    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
                probs = task.probabilities(logits)
                total = probs if total is None else total + probs
                passes += 1
        return total / passes

    def logits(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """One plain pass's logits (B, C, H, W): of the whole images, or of windows blended."""
        return net(images) if self.mode == "whole" else self._slide(images, lambda w: net(w).float())

    def _slide(self, images: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The blended window scores of each image, through the same engine as images read from disk."""
        h, w = images.shape[-2:]
        weight = blend_weight(self.crop_size, self.blend)
        blended = []
        for image in images:
            bands = blend_rows(
                lambda y0, y1, image=image: image[:, y0:y1],
                h,
                w,
                self.crop_size,
                self.stride,
                score,
                weight,
                self.window_batch,
                images.device,
            )
            blended.append(torch.cat([band for _, band in bands], dim=1))
        return torch.stack(blended)

    def as_windows(self, crop_size: Sequence[int]) -> Inference:
        """This inference over windows: itself when it slides; a whole-image one (its scales, flips, threshold and
        blend kept) over windows of `crop_size` every two thirds of a window, for images too large to go whole."""
        if self.mode == "slide":
            return self
        return Inference(
            mode="slide",
            crop_size=crop_size,
            scales=self.scales,
            flip=self.flip,
            threshold=self.threshold,
            blend=self.blend,
            window_above=self.window_above,
            window_batch=self.window_batch,
        )

    def is_large(self, size: Sequence[int]) -> bool:
        """An image of `size` (H, W) with more pixels than `window_above` squared: predicted window by window."""
        return int(size[0]) * int(size[1]) > self.window_above**2


@torch.no_grad()  # generator-aware: each step of the generator runs without autograd
def stream_windows(
    scorer: Any,
    net: nn.Module,
    read: Callable[[int, int], torch.Tensor],
    size: tuple[int, int],
    task: TaskKind = MULTICLASS,
    device: torch.device | str | None = None,
    on_window_row: Callable[[], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Probabilities of an image read in rows (`read(y0, y1)` -> (C_in, y1 - y0, W) floats), yielded as
    consecutive bands (y0, (num_classes, h, W)) from the top: windows as the in-memory slide lays them out, never
    the whole image in memory (segkit.training.windows). `scorer` lays the windows out (`crop_size`, `stride`,
    `blend`, `window_batch`) and scores them (`window_scores`, `blended_probabilities`): a sliding `Inference`
    (`as_windows` of any other) or an ensemble of them."""
    if scorer.mode != "slide":
        raise ValueError("stream_windows needs mode=slide: take `as_windows(crop_size)` of a whole inference.")
    bands = blend_rows(
        read,
        size[0],
        size[1],
        scorer.crop_size,
        scorer.stride,
        lambda w: scorer.window_scores(net, w, task),
        blend_weight(scorer.crop_size, scorer.blend),
        scorer.window_batch,
        device,
        on_window_row,
    )
    for y0, band in bands:
        yield y0, scorer.blended_probabilities(band[None], task)[0]


def build_inference(cfg: dict | None, data: dict) -> Inference:
    """The inference of an `inference` config (none: plain whole-image passes); slide's window defaults to the
    training crop (`data["crop_size"]`).

    Args:
        cfg: the `inference` config as a dict (`Inference`'s arguments), or None.
        data: the data config (a checkpoint's own, for evaluate.py and predict.py).

    Example:
        >>> from segkit.training.inference import build_inference
        >>> build_inference({"mode": "slide"}, {"crop_size": [64, 96]})
        Inference(mode=slide, crop_size=(64, 96), stride=(42, 64), scales=[1.0], flip=False, threshold=0.5, blend=mean)
    """
    cfg = dict(cfg or {})
    if cfg.get("mode") == "slide" and not cfg.get("crop_size"):
        cfg["crop_size"] = data.get("crop_size")
    return Inference(**cfg)
