"""The Lightning callbacks segkit adds to a trainer: prediction samples each validation (PNG grid, W&B,
TensorBoard), the dashboard's confusion matrices and hyperparameters (DashboardSummaries), the time budget of the
learning-rate schedule (TimeBudget), a W&B table of evaluated images, and masks written to disk. The pictures come
from segkit.drawing and segkit.report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image

from segkit.drawing import grid, overlay, sample_panel, save_index_png, to_rgb

log = logging.getLogger(__name__)


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
    overlays, to TensorBoard as an image, and as a PNG grid in `dirpath` (one per epoch).

    The images are spread over the validation set and the same every epoch: one chosen at random (from `seed`) in
    each of `num_samples` equal parts of the set (in video datasets the first images are near-identical frames).
    A loader that does not tell its length gets its first images."""

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


# The metric columns of TensorBoard's HParams view: one list for every run, so that the jobs of a sweep, and runs of
# other settings, line up; TensorBoard reads each run's last value of these scalars (a metric a run never logged,
# test/* with test=false, stays empty).
HPARAMS_METRICS = (
    "val/mIoU_best",
    "val/mIoU",
    "val/mDice",
    "val/pixel_acc",
    "val/loss",
    "train/loss_epoch",
    "test/mIoU",
    "test/mDice",
    "test/pixel_acc",
    "test/loss",
)
# The hyperparameter columns of the HParams view: the choice of each config group (model=unet), a few values, and
# the run's command line as one string (`overrides`). One list for every run: TensorBoard takes the columns from
# whichever run it reads first, so a run's own extra keys would hide or show columns at random. A run's records
# also hold every value its command line set, outside the columns.
HPARAMS_GROUPS = ("data", "model", "backbone", "loss", "optimizer", "scheduler", "augment", "experiment")
HPARAMS_VALUES = (
    "optimizer.lr",
    "optimizer.weight_decay",
    "data.batch_size",
    "trainer.max_epochs",
    "trainer.max_time",
    "trainer.precision",
    "trainer.accumulate_grad_batches",
    "seed",
)
HPARAMS_COLUMNS = (*HPARAMS_GROUPS, *HPARAMS_VALUES, "overrides")
# The five columns TensorBoard ticks at first (it ticks five, these marked ones first).
HPARAMS_TICKED = ("backbone", "loss", "model", "optimizer.lr", "overrides")
# Overrides that say where or how a run is recorded, not what it trains.
_NOT_HPARAMS = ("hydra", "paths", "logger", "callbacks", "ckpt_path", "trusted_modules", "tags", "task_name")


class DashboardSummaries(L.Callback):
    """What the dashboards show besides the scalars and the prediction samples:
    - `val/confusion_matrix` after each validation (and `test/confusion_matrix` after testing): the heatmap of
      segkit.report (rows ground truth, each row normalised), to TensorBoard and W&B;
    - at the end of fitting, the run's hyperparameters for TensorBoard's HParams view (see run_hparams), with
      HPARAMS_COLUMNS and HPARAMS_METRICS as its columns, so the view compares the jobs of a sweep."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log_confusion(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_confusion(trainer, pl_module, "test")

    def _log_confusion(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        matrix = getattr(pl_module, "last_confusion", {}).get(split)
        loggers = [lg for lg in trainer.loggers if isinstance(lg, (TensorBoardLogger, WandbLogger))]
        if matrix is None or not loggers or not trainer.is_global_zero:
            return
        from segkit.report import confusion_heatmap

        picture = np.asarray(confusion_heatmap(matrix.numpy(), list(pl_module.hparams.data["class_names"])))
        key, step = f"{split}/confusion_matrix", trainer.global_step
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, picture, step, dataformats="HWC")
            else:
                logger.log_image(key=key, images=[picture], step=step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        choices, overrides = hydra_record(Path(trainer.default_root_dir))
        for logger in loggers:
            config = dict(logger.hparams) or {k: v for k, v in pl_module.hparams.items()}
            write_hparams(logger, run_hparams(config, choices, overrides))


def hydra_record(run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """(config group choices, command-line overrides) of the run in `run_dir`: its Hydra record (.hydra/), which a
    run resumed in place keeps from its first launch (overrides: every launch's, in order); without one, this
    process's Hydra config; else nothing."""
    from hydra.core.hydra_config import HydraConfig

    from segkit.resume import HYDRA_SUBDIR, is_run, recorded_overrides

    record = run_dir / HYDRA_SUBDIR / "hydra.yaml"
    if is_run(run_dir) and record.is_file():
        hydra = (yaml.safe_load(record.read_text()) or {}).get("hydra", {})
        return dict(hydra.get("runtime", {}).get("choices") or {}), recorded_overrides(run_dir)
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        return dict(hydra.runtime.choices), list(hydra.overrides.task)
    return {}, []


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def _hparam_value(value: Any) -> bool | int | float | str:
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()  # [64, 64], {hours: 2}


def run_hparams(config: dict[str, Any], choices: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The hyperparameters of a run, named as on the command line: each of HPARAMS_GROUPS's choice (`model: unet`),
    HPARAMS_VALUES, every value an override set (`loss.weights.dice: 0.5`, resolved from `config`), and the
    overrides as one string (`overrides`)."""
    flat = _flatten(config)
    params: dict[str, Any] = {group: choices.get(group) or "none" for group in HPARAMS_GROUPS if group in choices}
    params |= {key: flat[key] for key in HPARAMS_VALUES if key in flat}
    shown = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.split(".")[0].split("/")[0] in _NOT_HPARAMS:
            continue
        shown.append(override)
        if key in flat:
            params[key] = flat[key]
        elif key in choices:
            params[key] = choices[key] or "none"
    params["overrides"] = " ".join(shown) or "none"
    return {key: _hparam_value(value) for key, value in params.items()}


def write_hparams(
    logger: TensorBoardLogger,
    params: dict[str, Any],
    columns: Sequence[str] = HPARAMS_COLUMNS,
    metrics: Sequence[str] = HPARAMS_METRICS,
    ticked: Sequence[str] = HPARAMS_TICKED,
) -> None:
    """The HParams plugin's records (experiment, session start and end) in the logger's run: `params` as the
    session's values; `columns` and `metrics` as the experiment's, `ticked` marked (TensorBoard ticks those first).
    Unlike TensorBoardLogger.log_hyperparams(params, metrics), no metric value is logged again at step 0: the view
    reads each metric's last value from the run's own scalars."""
    from tensorboard.plugins.hparams.api_pb2 import DATA_TYPE_STRING, HParamInfo
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from torch.utils.tensorboard.summary import hparams

    experiment, start, end = hparams(params, dict.fromkeys(metrics, 0.0))
    plugin_data = experiment.value[0].metadata.plugin_data
    content = HParamsPluginData.FromString(plugin_data.content)
    infos = {info.name: info for info in content.experiment.hparam_infos}
    content.experiment.ClearField("hparam_infos")
    for name in columns:
        info = HParamInfo()
        info.CopyFrom(infos.get(name) or HParamInfo(name=name, type=DATA_TYPE_STRING))
        info.differs = name in ticked
        content.experiment.hparam_infos.append(info)
    plugin_data.content = content.SerializeToString()
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    writer.flush()


class TimeBudget(L.Callback):
    """With a time limit (`trainer.max_time`: Lightning's Timer), sizes the learning-rate schedule to the time: at the
    start of each training batch it tells the schedule what share of the budget will have passed when the batch ends
    (its `set_time_progress`, see segkit.schedules), so the rate decays by steps or by time, whichever is further
    along. The batch expected to end past the budget is the last: it runs at the schedule's final rate and training
    stops after it (Lightning's Timer would stop after the next one). The share is measured on the Timer's clock
    (which a resumed run restores) plus the recent batch time, and taken from the first process, so every process
    steps the same rate. Listed before the learning-rate monitor, which then logs the rate each batch uses. Without
    a time limit it does nothing."""

    def __init__(self, smoothing: float = 0.3) -> None:
        self.smoothing = smoothing
        self._last: float | None = None
        self._batch_s: float | None = None
        self._stop = False

    @staticmethod
    def _timer(trainer: L.Trainer) -> Timer | None:
        return next((cb for cb in trainer.callbacks if isinstance(cb, Timer) and cb.time_remaining() is not None), None)

    # Validation, or an epoch boundary, between two batches is not batch time.
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        timer = self._timer(trainer)
        schedules = [c.scheduler for c in trainer.lr_scheduler_configs if hasattr(c.scheduler, "set_time_progress")]
        if timer is None or not schedules:
            return
        elapsed, remaining = timer.time_elapsed(), timer.time_remaining()
        if self._last is not None:
            batch_s = elapsed - self._last
            self._batch_s = (
                batch_s if self._batch_s is None else ((1 - self.smoothing) * self._batch_s + self.smoothing * batch_s)
            )
        self._last = elapsed
        progress = (elapsed + (self._batch_s or 0.0)) / max(elapsed + remaining, 1e-9)
        progress = float(trainer.strategy.broadcast(min(1.0, progress)))
        self._stop = progress >= 1.0
        for schedule in schedules:
            schedule.set_time_progress(progress)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._stop:
            trainer.should_stop = True


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
