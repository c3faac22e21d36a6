"""The Lightning callbacks segkit adds to a trainer: prediction samples each validation (PNG grid, W&B,
TensorBoard), a W&B table of evaluated images, and masks written to disk. The pictures come from segkit.drawing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image

from segkit.drawing import overlay, sample_panel, save_index_png, to_rgb


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
