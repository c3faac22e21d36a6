"""The windowed path of predict.py and evaluate.py: a large image read in bands of rows, blended window by window,
its mask (and its probabilities) written as tiled TIFFs tile row by tile row, a GeoTIFF's georeference copied. Peak
memory is a few bands of rows by the image's width (docs/large-images.md), whatever the image's height.

Masks: `<masks_dir>/<name>.tif`, uint8: multiclass class ids (a palette TIFF in the data's colours, up to 256
classes), binary 0/255, multilabel one 0/1 band per label. Probabilities: `<probabilities_dir>/<name>.tif`, as the
small images' (`probability_bands`). Overlays are not drawn: a picture of that size helps nobody.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from segkit.data.rasters import RasterRows
from segkit.reports.predictions import probability_bands
from segkit.reports.tiled_tiff import TiledTiffStream
from segkit.task_kind import TaskKind
from segkit.training.inference import Inference, stream_windows
from segkit.training.windows import window_rows

log = logging.getLogger(__name__)


def training_crop(data: dict) -> tuple[int, int]:
    """The windows a whole-image inference takes on large images: the training crop (else the image size, else
    512 x 512)."""
    crop = data.get("crop_size") or data.get("image_size") or 512
    crop = [crop, crop] if isinstance(crop, int) else list(crop)
    return int(crop[0]), int(crop[-1])


def windowed_inference(inference: Inference, data: dict, count: int) -> Inference:
    """The inference large images take: a sliding one as it is, any other over windows of the training crop (the
    log says so, for the `count` images concerned)."""
    windows = inference.as_windows(training_crop(data))
    if windows is not inference:
        log.info(
            "%d image(s) above %d x %d pixels (inference.window_above): inference=%s cannot hold them whole, so "
            "they are predicted in windows of the training crop %s every %s pixels, read window by window.",
            count,
            inference.window_above,
            inference.window_above,
            inference.mode,
            windows.crop_size,
            windows.stride,
        )
    return windows


def palette_colormap(palette: Sequence[Sequence[int]]) -> np.ndarray | None:
    """A TIFF colour map (3, 256) uint16 of the data's palette, or None for more than 256 classes."""
    if len(palette) > 256:
        return None
    colormap = np.zeros((3, 256), dtype=np.uint16)
    colormap[:, : len(palette)] = np.asarray(palette, dtype=np.uint16).T * 257
    return colormap


def mask_pixels(pred: torch.Tensor, task: TaskKind) -> np.ndarray:
    """A band of predictions as the mask file stores them: class ids (h, W) uint8, binary 0/255, multilabel
    (h, W, labels) 0/1."""
    pred = pred.to(torch.uint8).cpu()
    if task.name == "binary":
        return pred.numpy() * np.uint8(255)
    if task.multilabel:
        return pred.permute(1, 2, 0).contiguous().numpy()
    return pred.numpy()


class LargeImages:
    """Predicts large images one by one, window by window (segkit.training.inference.stream_windows), writing as
    it goes.

    Args:
        masks_dir: where `<name>.tif` masks go; None: none written (evaluate.py scores without saving).
        palette: one RGB colour per class (a multiclass mask's colour map).
        task: the checkpoint's task.
        probabilities_dir: where `<name>.tif` probabilities go, or None for none.
        probability_format: "float16" or "uint8" (probabilities x 255, rounded).

    Example:
        >>> from segkit.reports.large_images import LargeImages
        >>> from segkit.task_kind import TaskKind
        >>> large = LargeImages("out/masks", [[0, 0, 0], [255, 0, 0]], TaskKind("multiclass"))
        >>> large.predict("scene.tif", "scene", net, inference, in_channels=3)  # doctest: +SKIP
    """

    def __init__(
        self,
        masks_dir: str | Path | None,
        palette: Sequence[Sequence[int]],
        task: TaskKind,
        probabilities_dir: str | Path | None = None,
        probability_format: str = "float16",
    ) -> None:
        self.masks_dir = Path(masks_dir) if masks_dir else None
        self.palette = palette
        self.task = task
        self.probabilities_dir = Path(probabilities_dir) if probabilities_dir else None
        self.probability_format = probability_format
        self.written = 0

    def mask_path(self, name: str) -> Path:
        return self.masks_dir / f"{name}.tif"

    def predict(
        self,
        path: str | Path,
        name: str,
        net: nn.Module,
        inference: Inference,
        in_channels: int,
        image_max_value: float | None = None,
        device: torch.device | str = "cpu",
        autocast: Callable[[], Any] = contextlib.nullcontext,
        on_band: Callable[[int, torch.Tensor], None] | None = None,
    ) -> None:
        """Reads, predicts and writes one image; a failure leaves no mask (raises DataError for a bad file).
        `on_band(y0, predictions)` sees each band's predictions (the task's, on the device) before it is written."""
        with RasterRows(path, in_channels, image_max_value) as image, contextlib.ExitStack() as files:
            size = (image.height, image.width)
            num_classes = len(self.palette)
            labels = num_classes if self.task.multilabel else 1
            colormap = palette_colormap(self.palette) if self.task.name == "multiclass" else None
            masks = None
            if self.masks_dir is not None:
                masks = files.enter_context(
                    TiledTiffStream(
                        self.mask_path(name), *size, np.uint8, labels, colormap=colormap, extratags=image.geo_tags
                    )
                )
            probabilities = None
            if self.probabilities_dir is not None:
                bands = 1 if self.task.name == "binary" else num_classes
                probabilities = files.enter_context(
                    TiledTiffStream(
                        self.probabilities_dir / f"{name}.tif",
                        *size,
                        np.dtype(self.probability_format),
                        bands,
                        extratags=image.geo_tags,
                    )
                )

            def read(y0: int, y1: int) -> torch.Tensor:
                return torch.from_numpy(image.rows(y0, y1)).permute(2, 0, 1)

            console = Console(stderr=True)
            progress = files.enter_context(
                Progress(
                    TextColumn(f"{name} ({size[1]} x {size[0]})"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("window rows"),
                    TimeRemainingColumn(),
                    console=console,
                    disable=not console.is_terminal,  # a log file gets the summary line, not a bar per row
                )
            )
            bar = progress.add_task(name, total=window_rows(size[0], inference.crop_size[0], inference.stride[0]))
            with autocast():
                for y0, probs in stream_windows(
                    inference, net, read, size, self.task, device, on_window_row=lambda: progress.advance(bar)
                ):
                    preds = self.task.decide(probs[None], inference.threshold)[0]
                    if on_band is not None:
                        on_band(y0, preds)
                    if masks is not None:
                        masks.write_rows(mask_pixels(preds, self.task))
                    if probabilities is not None:
                        probabilities.write_rows(probability_bands(probs, self.task, self.probability_format))
        self.written += 1
