"""What evaluate.py and predict.py write of each image: its predicted mask as a palette PNG (and an overlay), and a
W&B table of evaluated images. Lightning callbacks the tasks add to their trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from segkit.reports.drawing import overlay, save_index_png, to_rgb


class PredictionTable(L.Callback):
    """A W&B table of the first `max_rows` evaluated images: name, the image with ground truth and prediction
    as interactive masks, and the image's own pixel accuracy (to sort by the worst). evaluate.py adds it with
    `log_table=<rows>`; logged at the end of validation or test to every W&B logger.

    Args:
        class_names: one name per class (the masks' labels).
        ignore_index: mask value of ignored pixels, left out of the accuracy.
        max_rows: images in the table at most.

    Example:
        >>> import lightning as L
        >>> from segkit.reports.predictions import PredictionTable
        >>> table = PredictionTable(["background", "cell"], ignore_index=255, max_rows=16)
        >>> trainer = L.Trainer(logger=wandb_logger, callbacks=[table])  # doctest: +SKIP
    """

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
            masks = {
                "ground_truth": {"mask_data": gt, "class_labels": self.labels},
                "prediction": {"mask_data": pr, "class_labels": self.labels},
            }
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
    image with the prediction over it as `<overlays_dir>/<name>.png`. Works for validate, test and predict:
    predict.py writes its masks with it, evaluate.py with `save_predictions=true`.

    Args:
        masks_dir: the folder of the masks (class ids, coloured by the palette; names as the batch's `name`).
        palette: one RGB colour per class.
        overlays_dir: the folder of the overlays, or None for none.
        ignore_index: class id drawn as ignored in the overlays.

    Example:
        >>> import numpy as np, torch
        >>> from segkit.reports.predictions import MaskWriter
        >>> writer = MaskWriter("masks", palette=[[0, 0, 0], [255, 0, 0]])  # doctest: +SKIP
        >>> writer.write(torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long), ["a"])  # doctest: +SKIP
    """

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
