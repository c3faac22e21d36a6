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

from segkit.reports.drawing import overlay, save_grey_png, save_index_png, to_rgb
from segkit.task_kind import TaskKind

LABEL_FORMATS = ("png", "tiff")


def wandb_masks(gt: np.ndarray, pred: np.ndarray, class_names: Sequence[str], ignore_index: int | None) -> dict:
    """W&B's interactive masks of one image (`wandb.Image(..., masks=)`): ground truth and prediction as class maps,
    or for a multi-label task (masks (C, H, W)) a pair per label, since W&B's masks hold one class per pixel."""
    gt, pred = gt.astype(np.int64), pred.astype(np.int64)
    if gt.ndim == 2:
        labels = dict(enumerate(class_names))
        if ignore_index is not None:
            labels[int(ignore_index)] = "ignore"
        return {
            "ground_truth": {"mask_data": gt, "class_labels": labels},
            "prediction": {"mask_data": pred, "class_labels": labels},
        }
    masks = {}
    for c, name in enumerate(class_names):
        labels = {0: f"not {name}", 1: name, 2: "ignore"}
        truth = np.where(gt[c] == ignore_index, 2, gt[c]) if ignore_index is not None else gt[c]
        masks[f"{name} (truth)"] = {"mask_data": truth, "class_labels": labels}
        masks[f"{name} (predicted)"] = {"mask_data": pred[c], "class_labels": labels}
    return masks


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
        self.class_names = list(class_names)
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
            masks = wandb_masks(gt, pr, self.class_names, self.ignore_index)
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
    """Writes each predicted mask and, when `overlays_dir` is set, the image with the prediction over it as
    `<overlays_dir>/<name>.png`. The masks, by task: multiclass `<masks_dir>/<name>.png` (a palette PNG of class ids);
    binary `<masks_dir>/<name>.png` (0/255 grey); multilabel a 0/255 PNG per label, `<masks_dir>/<label>/<name>.png`,
    or with `label_format="tiff"` one `<masks_dir>/<name>.tif` of 0/1 pages, one per label. Works for validate, test
    and predict: predict.py writes its masks with it, evaluate.py with `save_predictions=true`.

    Args:
        masks_dir: the folder of the masks (names as the batch's `name`).
        palette: one RGB colour per class.
        overlays_dir: the folder of the overlays, or None for none.
        ignore_index: class id drawn as ignored in the overlays.
        task: the checkpoint's `data.task`: multiclass, binary or multilabel.
        class_names: the labels' names (multilabel's folders).
        label_format: multilabel: "png" (a folder per label) or "tiff" (one multi-page file per image).
        probabilities_dir: where each image's probabilities go as `<name>.tif` (`probability_bands`), when the
            batch's outputs carry them (`probs`); None for none.
        probability_format: "float16" or "uint8" (x 255).

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
        task: str = "multiclass",
        class_names: Sequence[str] | None = None,
        label_format: str = "png",
        probabilities_dir: str | Path | None = None,
        probability_format: str = "float16",
    ) -> None:
        if label_format not in LABEL_FORMATS:
            raise ValueError(f"label_format={label_format!r} is not one of {LABEL_FORMATS}.")
        if probability_format not in PROBABILITY_FORMATS:
            raise ValueError(f"probability_format={probability_format!r} is not one of {PROBABILITY_FORMATS}.")
        self.masks_dir = Path(masks_dir)
        self.overlays_dir = Path(overlays_dir) if overlays_dir else None
        self.palette = [list(c) for c in palette]
        self.ignore_index = ignore_index
        self.task = task
        self.class_names = list(class_names) if class_names else [str(i) for i in range(len(self.palette))]
        self.label_format = label_format
        self.probabilities_dir = Path(probabilities_dir) if probabilities_dir else None
        self.probability_format = probability_format
        self.written = 0

    def mask_path(self, name: str) -> Path:
        """Where an image's mask goes (a multi-label PNG's: the folder of its first label)."""
        if self.task == "multilabel":
            return self.masks_dir / (
                f"{name}.tif" if self.label_format == "tiff" else f"{self.class_names[0]}/{name}.png"
            )
        return self.masks_dir / f"{name}.png"

    def save_mask(self, pred: np.ndarray, name: str) -> None:
        if self.task == "binary":
            save_grey_png(self.mask_path(name), pred)
        elif self.task == "multilabel" and self.label_format == "tiff":
            import tifffile

            path = self.mask_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, pred.astype(np.uint8), photometric="minisblack", compression="zlib")
        elif self.task == "multilabel":
            for label, plane in zip(self.class_names, pred):
                save_grey_png(self.masks_dir / label / f"{name}.png", plane)
        else:
            save_index_png(self.mask_path(name), pred, self.palette)

    def write(
        self, images: torch.Tensor, preds: torch.Tensor, names: Sequence[str], probs: torch.Tensor | None = None
    ) -> None:
        for i, (image, pred, name) in enumerate(zip(images, preds.cpu().numpy(), names)):
            self.save_mask(pred, name)
            if self.probabilities_dir is not None and probs is not None:
                bands = probability_bands(probs[i], TaskKind(self.task), self.probability_format)
                save_probabilities(self.probabilities_dir / f"{name}.tif", bands)
            if self.overlays_dir is not None:
                picture = overlay(to_rgb(image), pred, self.palette, self.ignore_index)
                path = self.overlays_dir / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(picture).save(path, format="PNG")
            self.written += 1

    def _on_batch_end(self, outputs: Any, batch: dict[str, Any]) -> None:
        names = batch.get("name") or [f"{self.written + i:06d}" for i in range(len(batch["image"]))]
        self.write(batch["image"], outputs["preds"], names, outputs.get("probs"))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._on_batch_end(outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._on_batch_end(outputs, batch)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._on_batch_end(outputs, batch)


PROBABILITY_FORMATS = ("float16", "uint8")


def probability_bands(probs: torch.Tensor, task: Any, probability_format: str = "float16") -> np.ndarray:
    """Per-class probabilities (C, H, W) as the probability files store them: (H, W, bands), one band per class
    (binary: the positive class's only, one band (H, W)); float16, or uint8 as round(p x 255).

    Example:
        >>> import torch
        >>> from segkit.reports.predictions import probability_bands
        >>> from segkit.task_kind import TaskKind
        >>> probability_bands(torch.tensor([[[0.2]], [[0.8]]]), TaskKind("binary"), "uint8").tolist()
        [[204]]
    """
    if task.name == "binary":
        probs = probs[1:]
    bands = probs.float().permute(1, 2, 0).cpu().numpy()
    if probability_format == "uint8":
        bands = np.rint(np.clip(bands, 0.0, 1.0) * 255).astype(np.uint8)
    else:
        bands = bands.astype(np.float16)
    return bands[..., 0] if bands.shape[-1] == 1 else bands


def save_probabilities(path: Path, bands: np.ndarray) -> None:
    """A small image's probabilities: the same (H, W[, bands]) TIFF as a large image's, written at once."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"planarconfig": "contig"} if bands.ndim == 3 else {}
    tifffile.imwrite(path, bands, photometric="minisblack", compression="zlib", metadata=None, **options)
