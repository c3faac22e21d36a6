"""Predict masks: `python predict.py ckpt_path=PATH input=FILE_OR_DIR output=DIR` (see conf/predict.yaml)."""

import hydra
from omegaconf import DictConfig

from segkit.config.checks import check_overrides, validate
from segkit.config.hydra_setup import register_resolvers
from segkit.errors import refusals_as_messages


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
@refusals_as_messages  # a config, data, device or checkpoint mistake: its message, no traceback
def main(cfg: DictConfig) -> None:
    from segkit.config.devices import check_devices
    from segkit.tasks.predict import predict  # Lightning and the models load after the config checks

    # A GPU trainer without a GPU fails here, in seconds. Unreadable inputs: every other mask is written, then the
    # inputs that were not are listed (segkit.tasks.predict.UnreadableInputs, a refusal) and the exit status is 1.
    predict(check_devices(validate(cfg, "predict")))


if __name__ == "__main__":
    register_resolvers()
    check_overrides("predict")  # a misspelled key fails here, before Hydra composes
    main()
