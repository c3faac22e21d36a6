"""Predict masks: `python predict.py ckpt_path=PATH input=FILE_OR_DIR output=DIR` (see conf/predict.yaml)."""

import sys

import hydra
from omegaconf import DictConfig

from segkit.config.checks import check_overrides, validate
from segkit.config.hydra_setup import register_resolvers


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from segkit.config.devices import check_devices
    from segkit.tasks.predict import UnreadableInputs, predict  # Lightning and the models load after the checks

    try:
        predict(check_devices(validate(cfg, "predict")))  # a GPU trainer without a GPU fails here, in seconds
    except UnreadableInputs as err:  # every other mask is written; list the inputs that were not, exit 1
        sys.exit(str(err))


if __name__ == "__main__":
    register_resolvers()
    check_overrides("predict")  # a misspelled key fails here, before Hydra composes
    main()
