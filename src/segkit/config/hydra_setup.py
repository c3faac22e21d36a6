"""What Hydra needs before it composes a segkit config: the config folder and the `${segkit.*}` resolvers.

Every place that composes calls `register_resolvers()` first: each entry script before its `main()`, the
config checks, the tests' conftest. Importing segkit registers nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

# The project's Hydra configs (the package is installed editable, beside them).
CONFIG_DIR = str(Path(__file__).resolve().parents[3] / "conf")


def register_resolvers() -> None:
    """Registers the `${segkit.*}` resolvers the configs use; calling it again changes nothing."""
    from segkit.errors import refusals_as_messages
    from segkit.runs import resume, run_names  # here: this module stays light for the entry scripts' first line

    register = OmegaConf.register_new_resolver
    register("segkit.run_name", run_names.run_name, replace=True)
    register("segkit.wandb_group", run_names.wandb_group, replace=True)
    register("segkit.wandb_tags", run_names.wandb_tags, replace=True)
    register("segkit.mlflow_tags", run_names.mlflow_tags, replace=True)
    # The working directory, resolvable before Hydra's own `${hydra:runtime.cwd}` exists (a sweep's directory is
    # resolved before any job starts).
    register("segkit.cwd", os.getcwd, replace=True)
    # Training's run directory and Hydra's record in it: a new one, the resumed run's, or one a distributed launch
    # shares (segkit.runs.resume decides). A refused resume is said as its message, as the commands say theirs.
    register("segkit.run_dir", refusals_as_messages(resume.run_dir), replace=True, use_cache=True)
    register("segkit.hydra_subdir", refusals_as_messages(resume.hydra_subdir), replace=True, use_cache=True)
