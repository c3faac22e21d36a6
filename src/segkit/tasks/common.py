"""Pieces the train and evaluate tasks share: building loggers, callbacks and the trainer, and writing results."""

from __future__ import annotations

import logging
import netrc
import os
import sys
from typing import Any, Mapping

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)


def plain(cfg: DictConfig | None) -> Any:
    """A resolved, plain-Python copy of a config node: safe for hyperparameters and `weights_only` loading."""
    return None if cfg is None else OmegaConf.to_container(cfg, resolve=True)


def checkpoint_argument(value: Any) -> str | list[str]:
    """`ckpt_path` as given: one path, or a list (`ckpt_path=[a,b,c]`, an ensemble) as plain strings."""
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    return str(value)


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def instantiate_each(cfg: DictConfig | None) -> list[Any]:
    """One object per entry of a group like `logger` or `callbacks`; entries set to null are skipped."""
    return [instantiate(node) for node in (cfg or {}).values() if node is not None and "_target_" in node]


def build_loggers(cfg: DictConfig | None) -> list[Logger]:
    if cfg and "wandb" in cfg and "WANDB_MODE" not in os.environ and not wandb_has_credentials():
        os.environ["WANDB_MODE"] = "offline"
        log.info(
            "W&B: no API key found, logging offline; upload later with `wandb sync <run dir>/wandb/offline-run-*`."
        )
    return instantiate_each(cfg)


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    """The configured trainer, loggers and callbacks, plus `callbacks` a task adds itself."""
    loggers = build_loggers(cfg.get("logger"))
    callbacks = instantiate_each(cfg.get("callbacks")) + list(callbacks or [])
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)


def float_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor))}


def split_metrics(metrics: Mapping[str, Any], split: str) -> dict[str, float]:
    """The scores of one split (`val/...`, `test/...`), without running-best trackers such as `val/mIoU_best`."""
    return float_metrics({k: v for k, v in metrics.items() if k.startswith(f"{split}/") and not k.endswith("_best")})


def finish_wandb() -> None:
    """Close the W&B run so that the next job of a multirun starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def log_to_files(text: str, name: str = "segkit") -> None:
    """`text` into the log files of the logging set-up (Hydra's `<task>.log` in the run directory), not to the
    console, which has shown it already."""
    record = logging.LogRecord(name, logging.INFO, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def print_table(title: str, metrics: Mapping[str, float]) -> None:
    width = max(len(k) for k in metrics) if metrics else 10
    lines = [title, "-" * (width + 12)]
    lines += [f"{k:<{width}}  {v:>9.4f}" for k, v in sorted(metrics.items())]
    print("\n".join(lines))
