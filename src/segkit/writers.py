"""Predictions on disk: palette PNGs (they open in colour and still hold the class ids) and overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from PIL import Image

from segkit.visualize import overlay, to_rgb


def save_index_png(path: Path, mask: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """A mode-P PNG: pixel values are class ids, the palette colours them."""
    if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
        raise ValueError(f"{path}: class ids outside 0..255 do not fit a palette PNG.")
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [c for colour in palette for c in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")  # not from the name: `...png` has no extension to Pillow


class MaskWriter(L.Callback):
    """Writes each predicted mask as `<masks_dir>/<name>.png` (palette PNG) and, when `overlays_dir` is set, the
    image with the prediction over it as `<overlays_dir>/<name>.png`. Works for validate, test and predict."""

    def __init__(
        self,
        masks_dir: str | Path,
        palette: Sequence[Sequence[int]],
        overlays_dir: str | Path | None = None,
        ignore_index: int | None = None,
    ) -> None:
        self.masks_dir = Path(masks_dir)
        self.overlays_dir = Path(overlays_dir) if overlays_dir else None
        self.palette = [list(c) for c in palette]
        self.ignore_index = ignore_index
        self.written = 0

    def write(self, images: torch.Tensor, preds: torch.Tensor, names: Sequence[str]) -> None:
        for image, pred, name in zip(images, preds.cpu().numpy(), names):
            save_index_png(self.masks_dir / f"{name}.png", pred, self.palette)
            if self.overlays_dir is not None:
                picture = overlay(to_rgb(image), pred, self.palette, self.ignore_index)
                path = self.overlays_dir / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(picture).save(path, format="PNG")
            self.written += 1

    def _on_batch_end(self, outputs: Any, batch: dict[str, Any]) -> None:
        names = batch.get("name") or [f"{self.written + i:06d}" for i in range(len(batch["image"]))]
        self.write(batch["image"], outputs["preds"], names)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._on_batch_end(outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._on_batch_end(outputs, batch)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._on_batch_end(outputs, batch)
