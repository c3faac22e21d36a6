"""segkit: semantic-segmentation experiments with Hydra, Lightning, timm and torchmetrics."""

import os
from pathlib import Path

from omegaconf import OmegaConf

from segkit import resume, run_names

__version__ = "0.1.0"

# The project's Hydra configs, for the `python -m segkit...` commands (the package is installed editable).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


# Config resolvers live here so that importing any part of segkit makes them available.
OmegaConf.register_new_resolver("segkit.run_name", run_names.run_name, replace=True)
OmegaConf.register_new_resolver("segkit.wandb_group", run_names.wandb_group, replace=True)
OmegaConf.register_new_resolver("segkit.wandb_tags", run_names.wandb_tags, replace=True)
# The working directory, resolvable before Hydra's own `${hydra:runtime.cwd}` exists (a sweep's directory is
# resolved before any job starts).
OmegaConf.register_new_resolver("segkit.cwd", os.getcwd, replace=True)
# Training's run directory and Hydra's record in it: a new one, the resumed run's, or one a distributed launch shares.
OmegaConf.register_new_resolver("segkit.run_dir", resume.run_dir, replace=True, use_cache=True)
OmegaConf.register_new_resolver("segkit.hydra_subdir", resume.hydra_subdir, replace=True, use_cache=True)
