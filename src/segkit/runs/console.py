"""What a training run says while it runs: one line per epoch in the log (terminal or not), known noise silenced
at its source, and at the end where everything went and what to run next."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

log = logging.getLogger("segkit")

# Messages that say nothing about the run, by the logger that prints them and how they start.
NOISE = {
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip:",),  # advertising, printed by every Trainer
}


class DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_known_noise() -> None:
    """Silence what repeats or advertises, nothing else: real warnings still show."""
    for name, starts in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(starts))
    # The worker count is the config's (data.num_workers): Lightning's advice repeats it for every loader.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # Lightning 2.6 calling a torch.utils._pytree API that torch 2.14 deprecates, on every fit and test.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    one_console_for_lightning()


def one_console_for_lightning() -> None:
    """Lightning gives its `lightning` logger a console handler of its own and lets it propagate too: where the
    root logger has handlers (Hydra's console and log file), every Lightning line was printed twice. Its own
    handler goes; its lines still reach the console and the log file through the root logger."""
    if not logging.getLogger().handlers:
        return
    lightning_log = logging.getLogger("lightning")
    for handler in list(lightning_log.handlers):
        if type(handler) is logging.StreamHandler:
            lightning_log.removeHandler(handler)


def _value(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, (int, float, torch.Tensor)) else None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def time_limit(trainer: L.Trainer) -> Timer | None:
    """Lightning's Timer of `trainer.max_time` (which a resumed run restores), when the run has a time limit."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, Timer) and cb.time_remaining() is not None), None)


class EpochLine(L.Callback):
    """`epoch 3/8  train loss 0.512  val loss 0.601  val mIoU 0.412  best 0.430  58 s  ETA 4 min 50 s`, through
    logging, so it reaches `train.log` and redirected output, where a progress bar leaves only its last frame.

    An epoch's time is the time spent in it: checkpoints carry the time of the epoch in progress, so an epoch
    interrupted and resumed reports its own duration, not the wall time since it first began. Under
    `trainer.max_time` the ETA is the time left when that is sooner than the epochs left
    (`ETA 35 s (trainer.max_time)`), and the line of the epoch the time limit ended says so."""

    def __init__(self) -> None:
        self._started: float | None = None  # monotonic time the epoch in progress began (shifted back on resume)
        self._resumed_at = 0.0  # epochs (with a fraction) done before this process started
        self._carried: dict[str, float] = {}  # the epoch in progress, from the checkpoint resumed
        self._fit_started = 0.0
        self._trainer: L.Trainer | None = None

    def state_dict(self) -> dict[str, float]:
        trainer = self._trainer
        if self._started is None or trainer is None:
            return {}
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        fraction = min(1.0, batches / trainer.num_training_batches) if trainer.num_training_batches else 0.0
        return {"seconds": time.monotonic() - self._started, "fraction": fraction}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self._carried = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = trainer
        # A run resumed inside an epoch goes on with it (no on_train_epoch_start): its clock starts where it was.
        self._started = time.monotonic() - self._carried.get("seconds", 0.0)
        self._resumed_at = trainer.current_epoch + self._carried.get("fraction", 0.0)
        self._fit_started = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._carried:  # resumed from a previous epoch's end: this process begins with a new epoch
            self._carried, self._resumed_at = {}, float(trainer.current_epoch)
        self._started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._carried = {}
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        parts = [f"epoch {epoch}/{total}" if total and total > 0 else f"epoch {epoch}"]
        mean = getattr(pl_module, "train_loss_mean", None)  # the module logs it after this hook
        if mean is not None and mean.update_called:
            parts.append(f"train loss {float(mean.compute()):.4f}")
        # A binary task's headline, its positive class's IoU (val/IoU), comes before the mean over both classes.
        shown = (("val/loss", "val loss"), ("val/IoU", "val IoU"), ("val/mIoU", "val mIoU"), ("val/mIoU_best", "best"))
        for key, label in shown:
            value = _value(metrics, key)
            if value is not None:
                parts.append(f"{label} {value:.4f}")
        epoch_s = time.monotonic() - self._started
        parts.append(_duration(epoch_s))
        parts += self._time_left(trainer, epoch, epoch_s)
        log.info("  ".join(parts))

    def _time_left(self, trainer: L.Trainer, epoch: int, epoch_s: float) -> list[str]:
        """The ETA: the epochs left at this process's pace, or the time `trainer.max_time` leaves if sooner; on the
        epoch the time limit ended, that instead."""
        total, timer = trainer.max_epochs, time_limit(trainer)
        left = timer.time_remaining() if timer is not None else None
        if left is not None:
            # Stopped within a batch of the limit: the Timer's own stop, or segkit's TimeBudget, which stops the
            # batch expected to end past it.
            batch_s = epoch_s / max(1, trainer.fit_loop.epoch_loop.batch_progress.current.processed)
            if trainer.should_stop and left <= batch_s:
                limit = _duration(left + timer.time_elapsed())
                return [f"stopped by the time limit (trainer.max_time, {limit})"]
        if total and total > 0 and epoch >= total:
            return []
        estimates = []  # (seconds, why)
        done = epoch - self._resumed_at  # what this process trained, in epochs
        if total and total > 0 and done > 0:
            estimates.append(((time.monotonic() - self._fit_started) / done * (total - epoch), ""))
        if left is not None:
            estimates.append((max(0.0, left), " (trainer.max_time)"))
        if not estimates:
            return []
        seconds, why = min(estimates)
        return [f"ETA {_duration(seconds)}{why}"]


def closing_lines(output_dir: Path, best_checkpoint: str, loggers: list[Any]) -> list[str]:
    """Where the run went, and the commands that show it."""
    lines = [f"Run directory:   {output_dir}"]
    if best_checkpoint:
        lines.append(f"Best checkpoint: {best_checkpoint}")
    names = {type(logger).__name__ for logger in loggers}
    if "TensorBoardLogger" in names:
        lines.append(f"Dashboard:       make dashboard  (or: python dashboard.py --logdir {output_dir})")
    for logger in loggers:
        if type(logger).__name__ == "MLFlowLogger" and logger.run_id:
            lines.append(f"MLflow:          {mlflow_ui_command(logger._tracking_uri)}  (run {logger.run_id})")
    offline = sorted((output_dir / "wandb").glob("offline-run-*"))
    if offline:
        lines.append(f"W&B (offline):   wandb sync {offline[-1]}")
    return lines


def mlflow_ui_command(tracking_uri: str) -> str:
    """How to see an MLflow store: `make mlflow` for the default one (logs/mlflow/mlflow.db here), with
    MLFLOW_STORE for another local database, the address of a tracking server as it is."""
    from segkit.runs.mlflow_logger import sqlite_path

    database = sqlite_path(tracking_uri)
    if database is None:
        return tracking_uri
    if database.resolve() == (Path.cwd() / "logs" / "mlflow" / "mlflow.db").resolve():
        return "make mlflow"
    return f"make mlflow MLFLOW_STORE={database}"
