"""segkit: semantic-segmentation experiments with Hydra, Lightning, timm and torchmetrics."""

import os
from pathlib import Path

from omegaconf import OmegaConf

from segkit import resume

__version__ = "0.1.0"

# The project's Hydra configs, for the `python -m segkit...` commands (the package is installed editable).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _run_name(task_name: str, overrides: str) -> str:
    """`train` for a default run, `train:backbone=resnet50,model=fcn` for one with overrides."""
    return f"{task_name}:{overrides}" if overrides else task_name


# Config resolvers live here so that importing any part of segkit makes them available.
OmegaConf.register_new_resolver("segkit.run_name", _run_name, replace=True)
# The working directory, resolvable before Hydra's own `${hydra:runtime.cwd}` exists (a sweep's directory is
# resolved before any job starts).
OmegaConf.register_new_resolver("segkit.cwd", os.getcwd, replace=True)
# Training's run directory and Hydra's record in it: a new one, the resumed run's, or one a distributed launch shares.
OmegaConf.register_new_resolver("segkit.run_dir", resume.run_dir, replace=True, use_cache=True)
OmegaConf.register_new_resolver("segkit.hydra_subdir", resume.hydra_subdir, replace=True, use_cache=True)
