"""Prediction samples each validation: a few validation images with ground truth and prediction, as a PNG grid in
the run directory, to TensorBoard, to MLflow (that PNG, as an artifact) and to W&B (interactive mask overlays). The
pictures come from segkit.reports.drawing."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from PIL import Image

from segkit.reports.drawing import grid, sample_panel, to_rgb
from segkit.reports.predictions import wandb_masks


def spread_positions(count: int, k: int, seed: int) -> list[int]:
    """k positions out of `count`, one at random (from `seed`) in each of k equal parts: spread over the whole."""
    if count <= k:
        return list(range(count))
    rng = np.random.default_rng(seed)
    bounds = [i * count // k for i in range(k + 1)]
    return [int(lo + rng.integers(hi - lo)) for lo, hi in zip(bounds, bounds[1:])]


def validation_count(trainer: L.Trainer) -> int | None:
    """How many images this process's validation pass sees (its share under DDP, after limit_val_batches); None if
    the loader does not say."""
    loader = trainer.val_dataloaders
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    try:
        count = len(loader.sampler)
    except (AttributeError, TypeError):
        return None
    batches = (trainer.num_val_batches or [None])[0]
    batch_size = getattr(loader, "batch_size", None)
    if batch_size and batches is not None and batches != float("inf"):
        count = min(count, int(batches) * batch_size)
    return count


class PredictionSamples(L.Callback):
    """Logs `num_samples` validation images with ground truth and prediction overlays: to W&B as interactive mask
    overlays, to TensorBoard as an image, and as a PNG grid in `dirpath` (one per epoch), which MLflow gets as the
    artifact `val_samples/epoch_NNN.png`.

    The images are spread over the validation set and the same every epoch: one chosen at random (from `seed`) in
    each of `num_samples` equal parts of the set (in video datasets the first images are near-identical frames).
    A loader that does not tell its length gets its first images. In `conf/callbacks/default.yaml`.

    Args:
        dirpath: the folder of the PNG grids, `epoch_NNN.png` (`${paths.output_dir}/val_samples`).
        num_samples: images per epoch.
        every_n_epochs: log every n-th validation epoch.
        seed: which images (the same every epoch).

    Example:
        >>> import lightning as L
        >>> from segkit.callbacks import PredictionSamples
        >>> trainer = L.Trainer(callbacks=[PredictionSamples("run/val_samples", num_samples=8)])  # doctest: +SKIP
    """

    def __init__(self, dirpath: str, num_samples: int = 4, every_n_epochs: int = 1, seed: int = 0) -> None:
        self.dirpath = Path(dirpath)
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self._samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._kept: list[tuple[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []
        self._chosen: set[int] = set()
        self._position = 0
        self.positions: list[int] = []  # of the last panel, in the validation order

    def _active(self, trainer: L.Trainer) -> bool:
        return (
            not trainer.sanity_checking and trainer.is_global_zero and trainer.current_epoch % self.every_n_epochs == 0
        )

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._samples, self._kept, self._position = [], [], 0
        if self._active(trainer):
            count = validation_count(trainer)
            k = max(self.num_samples, 0)
            self._chosen = set(range(k) if count is None else spread_positions(count, k, self.seed))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active(trainer):
            return
        for image, mask, pred in zip(batch["image"], batch["mask"], outputs["preds"]):
            if self._position in self._chosen:
                self._kept.append((self._position, (image.cpu(), mask.cpu(), pred.cpu())))
            self._position += 1

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.positions = [position for position, _ in self._kept]
        self._samples, self._kept = [sample for _, sample in self._kept], []
        if not self._samples or not self._active(trainer):
            return
        data = pl_module.hparams.data
        palette, ignore_index = data["palette"], data.get("ignore_index")
        panels = [sample_panel(img, gt, pr, palette, ignore_index) for img, gt, pr in self._samples]
        self.dirpath.mkdir(parents=True, exist_ok=True)
        grid_image = grid(panels, columns=1)  # one panel a row; images of different sizes each keep their own
        path = self.dirpath / f"epoch_{trainer.current_epoch:03d}.png"
        Image.fromarray(grid_image).save(path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, data, trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/predictions", grid_image, trainer.global_step, dataformats="HWC")
            elif isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(path), "val_samples")
        self._samples = []

    def _log_wandb(self, logger: WandbLogger, data: dict, step: int) -> None:
        names, ignore_index = data["class_names"], data.get("ignore_index")
        masks = [wandb_masks(gt.numpy(), pr.numpy(), names, ignore_index) for _, gt, pr in self._samples]
        logger.log_image(
            key="val/predictions", images=[to_rgb(img) for img, _, _ in self._samples], masks=masks, step=step
        )
