"""Train a segmentation model from a composed config; returns the run's metrics as floats."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from segkit.loggers import CSVLogger
from segkit.module import SegmentationModule
from segkit.resume import find_checkpoint, requeued_checkpoint, resumes_in_place, wandb_run_id
from segkit.atomic import write_json
from segkit.tasks.common import (
    build_trainer,
    finish_wandb,
    float_metrics,
    plain,
    print_table,
    split_metrics,

)


def build_module(cfg: DictConfig) -> SegmentationModule:
    return SegmentationModule(
        model=plain(cfg.model),
        loss=plain(cfg.loss),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")),
        data=plain(cfg.data),
    )


def train(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("seed") is not None:  # seed 0 is a seed
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    checkpoint = find_checkpoint(cfg.get("ckpt_path"), cfg.paths.runs_dir) or requeued_checkpoint(output_dir)
    in_place = resumes_in_place(checkpoint, output_dir)
    if in_place:
        resumed_step = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        continue_logs(cfg, output_dir, resumed_step)

    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    if in_place:
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.forget_from(resumed_step)
    hparams = {**plain(cfg), **module.parameter_counts(), "output_dir": str(output_dir)}
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)

    try:
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
        metrics = float_metrics(trainer.callback_metrics)
        metrics["time/fit_s"] = time.perf_counter() - start
        best_path, last_path = checkpoint_paths(trainer)
        if cfg.get("test"):
            trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, weights_only=True)
            metrics.update(split_metrics(trainer.callback_metrics, "test"))
        summary = {
            "metrics": metrics,
            "best_checkpoint": best_path,
            "last_checkpoint": last_path,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
        }
        if trainer.is_global_zero:
            write_json(output_dir / "metrics.json", summary)
        if trainer.world_size > 1:  # every rank's own view, to check that they agree
            write_json(output_dir / "ranks" / f"metrics.rank{trainer.global_rank}.json", summary)
    finally:
        finish_wandb()
    if trainer.is_global_zero:  # last, so that it is not buried under W&B's summary
        headline = {k: v for k, v in metrics.items() if k.count("/") == 1 and not k.startswith("train/")}
        print_table(f"Run directory: {output_dir}", headline)
    return metrics


def continue_logs(cfg: DictConfig, run: Path, resumed_step: int) -> None:
    """A run resumed in place logs to its own W&B run (the id W&B recorded in the run directory), and TensorBoard
    hides what the interrupted process logged after the checkpoint (`purge_step`)."""
    loggers = cfg.get("logger") or {}
    wandb_cfg, tensorboard_cfg = loggers.get("wandb"), loggers.get("tensorboard")
    run_id = wandb_run_id(run)
    if wandb_cfg is not None and run_id and wandb_cfg.get("id") is None:
        with open_dict(wandb_cfg):
            wandb_cfg.id, wandb_cfg.resume = run_id, "allow"
    if tensorboard_cfg is not None:
        with open_dict(tensorboard_cfg):
            tensorboard_cfg.purge_step = resumed_step


def checkpoint_paths(trainer: L.Trainer) -> tuple[str, str]:
    """(best, last): the first monitored checkpoint callback's best file and the unmonitored one's latest."""
    callbacks = trainer.checkpoint_callbacks
    best = next((cb.best_model_path for cb in callbacks if cb.monitor is not None), "")
    last = next((cb.best_model_path for cb in callbacks if cb.monitor is None), "")
    return best, last


def optimized_value(metrics: dict[str, float], name: str | None) -> float | None:
    """The value a sweeper optimises; a clear error when the config names a metric the run never logged."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric '{name}' was not logged. Logged metrics: {', '.join(sorted(metrics))}.")
    return metrics[name]
