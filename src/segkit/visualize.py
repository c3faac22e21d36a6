"""Pictures of predictions: palette colouring, overlays, and a callback that logs them each validation."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image, ImageDraw

IGNORE_COLOUR = (255, 255, 255)


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, 3) uint8; one channel is shown grey, more than three are cut to three."""
    image = image.detach().float().cpu().clamp(0, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    elif image.shape[0] == 2:
        image = torch.cat([image, image[:1]])
    return (image[:3].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int | None) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    if ignore_index is not None and 0 <= ignore_index < 256:
        lut[ignore_index] = IGNORE_COLOUR
    return lut[np.clip(mask, 0, 255)]


def overlay(rgb: np.ndarray, mask: np.ndarray, palette, ignore_index: int | None, alpha: float = 0.5) -> np.ndarray:
    colour = colorize(mask, palette, ignore_index).astype(np.float32)
    blended = (1 - alpha) * rgb.astype(np.float32) + alpha * colour
    return blended.round().astype(np.uint8)


def sample_panel(image, target, pred, palette, ignore_index) -> np.ndarray:
    """image | ground truth over image | prediction over image, side by side."""
    rgb = to_rgb(image)
    target, pred = target.cpu().numpy(), pred.cpu().numpy()
    return np.concatenate(
        [rgb, overlay(rgb, target, palette, ignore_index), overlay(rgb, pred, palette, ignore_index)], axis=1
    )


def grid(tiles: Sequence[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    """Tiles (H, W, 3) of any sizes in rows of `columns`, each cell as large as the largest tile, white gaps."""
    h = max(t.shape[0] for t in tiles) + gap
    w = max(t.shape[1] for t in tiles) + gap
    rows = -(-len(tiles) // columns)
    canvas = np.full((rows * h, min(columns, len(tiles)) * w, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        y, x = (i // columns) * h, (i % columns) * w
        canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return canvas


def legend(class_names: Sequence[str], palette, width: int, ignore_index: int | None = None) -> np.ndarray:
    """A strip naming each class next to its colour (ignored pixels are white)."""
    entries = list(zip(class_names, palette)) + ([("ignore", IGNORE_COLOUR)] if ignore_index is not None else [])
    cell, line = 140, 18
    per_row = max(1, width // cell)
    rows = -(-len(entries) // per_row)
    strip = Image.new("RGB", (max(width, cell), rows * line + 4), "white")
    draw = ImageDraw.Draw(strip)
    for i, (name, colour) in enumerate(entries):
        x, y = (i % per_row) * cell + 4, (i // per_row) * line + 4
        draw.rectangle([x, y, x + 12, y + 12], fill=tuple(int(c) for c in colour), outline="black")
        draw.text((x + 18, y), str(name)[:18], fill="black")
    return np.asarray(strip)


class PredictionSamples(L.Callback):
    """Logs the first `num_samples` validation images with ground truth and prediction overlays:
    to W&B as interactive mask overlays, and as a PNG grid in `dirpath` (one per epoch)."""

    def __init__(self, dirpath: str, num_samples: int = 4, every_n_epochs: int = 1) -> None:
        self.dirpath = Path(dirpath)
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self._samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _active(self, trainer: L.Trainer) -> bool:
        return (
            not trainer.sanity_checking
            and trainer.is_global_zero
            and trainer.current_epoch % self.every_n_epochs == 0
        )

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._samples = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        missing = self.num_samples - len(self._samples)
        if missing <= 0 or not self._active(trainer):
            return
        for image, mask, pred in list(zip(batch["image"], batch["mask"], outputs["preds"]))[:missing]:
            self._samples.append((image.cpu(), mask.cpu(), pred.cpu()))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._samples or not self._active(trainer):
            return
        data = pl_module.hparams.data
        palette, ignore_index = data["palette"], data.get("ignore_index")
        panels = [sample_panel(img, gt, pr, palette, ignore_index) for img, gt, pr in self._samples]
        self.dirpath.mkdir(parents=True, exist_ok=True)
        grid_image = np.concatenate(panels, axis=0)
        Image.fromarray(grid_image).save(self.dirpath / f"epoch_{trainer.current_epoch:03d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, data, trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/predictions", grid_image, trainer.global_step, dataformats="HWC")
        self._samples = []

    def _log_wandb(self, logger: WandbLogger, data: dict, step: int) -> None:
        labels = dict(enumerate(data["class_names"]))
        if data.get("ignore_index") is not None:
            labels[int(data["ignore_index"])] = "ignore"
        masks = [
            {
                "ground_truth": {"mask_data": gt.numpy().astype(np.int64), "class_labels": labels},
                "prediction": {"mask_data": pr.numpy().astype(np.int64), "class_labels": labels},
            }
            for _, gt, pr in self._samples
        ]
        logger.log_image(
            key="val/predictions", images=[to_rgb(img) for img, _, _ in self._samples], masks=masks, step=step
        )


class PredictionTable(L.Callback):
    """A W&B table of the first `max_rows` evaluated images: name, the image with ground truth and prediction
    as interactive masks, and the image's own pixel accuracy (to sort by the worst)."""

    def __init__(self, class_names: Sequence[str], ignore_index: int | None, max_rows: int = 32) -> None:
        self.labels = dict(enumerate(class_names))
        if ignore_index is not None:
            self.labels[int(ignore_index)] = "ignore"
        self.ignore_index = ignore_index
        self.max_rows = max_rows
        self.rows: list[list] = []

    def _collect(self, outputs, batch) -> None:
        import wandb

        names = batch.get("name") or [str(len(self.rows) + i) for i in range(len(batch["image"]))]
        for image, mask, pred, name in zip(batch["image"], batch["mask"], outputs["preds"], names):
            if len(self.rows) >= self.max_rows:
                return
            gt, pr = mask.cpu().numpy().astype(np.int64), pred.cpu().numpy().astype(np.int64)
            labelled = gt != self.ignore_index if self.ignore_index is not None else np.ones_like(gt, bool)
            accuracy = float((gt == pr)[labelled].mean()) if labelled.any() else float("nan")
            masks = {"ground_truth": {"mask_data": gt, "class_labels": self.labels},
                     "prediction": {"mask_data": pr, "class_labels": self.labels}}
            self.rows.append([name, wandb.Image(to_rgb(image), masks=masks), accuracy])

    def _log(self, trainer: L.Trainer, split: str) -> None:
        import wandb

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and self.rows:
                table = wandb.Table(columns=["name", "image", "pixel_acc"], data=self.rows)
                logger.experiment.log({f"{split}/predictions_table": table})
        self.rows = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(outputs, batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, "test")
