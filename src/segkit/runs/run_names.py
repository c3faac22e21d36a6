"""How runs are named on dashboards: a sweep's jobs share a W&B group (an MLflow `group` tag) and carry their
overrides as tags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig

MAX_TAG_LENGTH = 64  # W&B refuses longer tags
MAX_MLFLOW_TAG_LENGTH = 8000  # MLflow's limit on a tag's value


def run_name(task_name: str, overrides: str) -> str:
    """`train` for a default run, `train:backbone=resnet50,model=fcn` for one with overrides."""
    return f"{task_name}:{overrides}" if overrides else task_name


def is_sweep(mode: Any) -> bool:
    return getattr(mode, "name", str(mode)) == "MULTIRUN"


def wandb_group(task_name: str, mode: Any, sweep_dir: str) -> str:
    """One group per sweep (`train-sweep-<its directory>`), else the task's name."""
    return f"{task_name}-sweep-{Path(sweep_dir).name}" if is_sweep(mode) else task_name


def wandb_tags(tags: Sequence[str] | None, mode: Any, overrides: Sequence[str]) -> ListConfig:
    """The configured tags, plus each override of a sweep's job (`model=fcn`, `optimizer.lr=0.003`).
    A ListConfig, not a list: OmegaConf.resolve cannot put a plain list where the interpolation was."""
    extra = [o.lstrip("+~")[:MAX_TAG_LENGTH] for o in overrides] if is_sweep(mode) else []
    return ListConfig(list(dict.fromkeys([*(tags or []), *extra])))


def mlflow_tags(
    task_name: str, tags: Sequence[str] | None, mode: Any, sweep_dir: str, overrides: Sequence[str]
) -> DictConfig:
    """An MLflow run's tags (MLflow's are key-value pairs, W&B's a list): `group`, as W&B's group (one per sweep);
    `tags`, the configured ones joined by commas; for a sweep's job also `sweep` (the sweep's directory) and
    `overrides` (the job's command line), so that the runs table filters a sweep (`tags.group = '...'`).
    A DictConfig, not a dict: OmegaConf.resolve cannot put a plain dict where the interpolation was."""
    values = {"group": wandb_group(task_name, mode, sweep_dir), "tags": ",".join(tags or [])}
    if is_sweep(mode):
        values |= {"sweep": str(sweep_dir), "overrides": " ".join(overrides)}
    return DictConfig({key: value[:MAX_MLFLOW_TAG_LENGTH] for key, value in values.items() if value})
