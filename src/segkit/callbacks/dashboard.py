"""What the dashboards show besides the scalars and the prediction samples: the first screen of TensorBoard (the
run's scores and losses), the confusion matrix after each validation and test (an image; for MLflow also its
counts as CSV), and the run's hyperparameters for TensorBoard's HParams view (DashboardSummaries)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import yaml
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

from segkit.reports.drawing import confusion_heatmap
from segkit.reports.evaluation import build_report, write_report_files
from segkit.runs.resume import HYDRA_SUBDIR, is_run, recorded_overrides

# The first screen of `make dashboard`: TensorBoard's Custom Scalars tab, which segkit.tasks.dashboard opens first,
# laid out as category -> chart title -> the regular expression of the scalars it draws: the scores, then the
# losses, then the learning rate. (Time Series, TensorBoard's own first tab, sorts its cards by name: `epoch` and
# `lr-AdamW` before `val/mIoU`.) A chart a metric: the lines of one chart share the run's colour.
SCALARS_LAYOUT = {
    "Scores (validation)": {
        "val/mIoU": "^val/mIoU$",
        "val/mIoU_best": "^val/mIoU_best$",
        "val/mDice": "^val/mDice$",
        "val/pixel_acc": "^val/pixel_acc$",
    },
    "Losses": {
        "train/loss_epoch": "^train/loss_epoch$",
        "val/loss": "^val/loss$",
        "train/loss_step": "^train/loss_step$",
    },
    "Learning rate": {"learning rate (lr-<optimizer>)": "^lr-"},
}

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
    - at the start of training, TensorBoard's Custom Scalars layout (SCALARS_LAYOUT): the run's scores, losses and
      learning rate, the first screen of `make dashboard`;
    - `val/confusion_matrix` after each validation (and `test/confusion_matrix` after testing): the heatmap of
      segkit.reports.drawing (rows ground truth, each row normalised), to TensorBoard and W&B; to MLflow as the
      artifacts `confusion_matrix/<split>/` (confusion_matrix.png and .csv, per_class.csv: an evaluation's
      files), the last validation's replacing the one before;
    - at the end of fitting, the run's hyperparameters for TensorBoard's HParams view (see run_hparams), with
      HPARAMS_COLUMNS and HPARAMS_METRICS as its columns, so the view compares the jobs of a sweep.

    Takes no arguments; it writes to the run's TensorBoard, W&B and MLflow loggers, and does nothing without them. In
    `conf/callbacks/default.yaml`.

    Example:
        >>> import lightning as L
        >>> from lightning.pytorch.loggers import TensorBoardLogger
        >>> from segkit.callbacks import DashboardSummaries
        >>> trainer = L.Trainer(logger=TensorBoardLogger("run"), callbacks=[DashboardSummaries()])  # doctest: +SKIP
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        layout = {
            category: {title: ["Multiline", [pattern]] for title, pattern in charts.items()}
            for category, charts in SCALARS_LAYOUT.items()
        }
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_custom_scalars(layout)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log_confusion(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_confusion(trainer, pl_module, "test")

    def _log_confusion(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        matrix = getattr(pl_module, "last_confusion", {}).get(split)
        loggers = [lg for lg in trainer.loggers if isinstance(lg, (TensorBoardLogger, WandbLogger, MLFlowLogger))]
        if matrix is None or not loggers or not trainer.is_global_zero:
            return
        names = list(pl_module.hparams.data["class_names"])
        picture = np.asarray(confusion_heatmap(matrix.numpy(), names))
        key, step = f"{split}/confusion_matrix", trainer.global_step
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, picture, step, dataformats="HWC")
            elif isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[picture], step=step)
            else:
                with tempfile.TemporaryDirectory() as folder:
                    write_report_files(build_report(matrix, names, pl_module.task.name), Path(folder))
                    logger.experiment.log_artifacts(logger.run_id, folder, f"confusion_matrix/{split}")

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
