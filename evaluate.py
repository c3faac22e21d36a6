"""Score a checkpoint: `python evaluate.py ckpt_path=PATH [split=test]` (see conf/evaluate.yaml)."""

import hydra
from omegaconf import DictConfig

from segkit.config.checks import check_overrides, validate
from segkit.config.hydra_setup import register_resolvers
from segkit.errors import refusals_as_messages


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@refusals_as_messages  # a config, data, device or checkpoint mistake: its message, no traceback
def main(cfg: DictConfig) -> None:
    from segkit.config.devices import check_devices
    from segkit.tasks.evaluate import evaluate  # Lightning and the models load after the config checks

    evaluate(check_devices(validate(cfg, "evaluate")))  # a GPU trainer without a GPU fails here, in seconds


if __name__ == "__main__":
    register_resolvers()
    check_overrides("evaluate")  # a misspelled key fails here, before Hydra composes
    main()
