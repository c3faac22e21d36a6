"""Check a dataset before training on it (see conf/check_data.yaml):

    python check_data.py data=folder data.root=/path/to/data [test=false] [full=false] [class_weights=enet]

Reads every file of every split and prints counts, image sizes, class pixel frequencies and every problem with its
file; writes report.json and class_weights.yaml to the run directory. Exits with status 1 exactly when `train.py`
with the same data config and `test` setting would stop.
"""

import sys

import hydra
from omegaconf import DictConfig

from segkit.config.checks import check_overrides
from segkit.config.hydra_setup import register_resolvers
from segkit.errors import refusals_as_messages


@hydra.main(version_base="1.3", config_path="conf", config_name="check_data")
@refusals_as_messages  # a config, data, device or checkpoint mistake: its message, no traceback
def main(cfg: DictConfig) -> None:
    from segkit.tasks.check_data import run_check  # the data stack loads after the config checks

    if run_check(cfg)["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    register_resolvers()
    check_overrides("check_data")  # a misspelled key fails here, before Hydra composes
    main()
