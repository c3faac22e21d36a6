"""Train a model: `python train.py model=unet backbone=efficientnet_b0` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from segkit.config.checks import check_overrides
from segkit.config.hydra_setup import register_resolvers
from segkit.errors import refusals_as_messages


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@refusals_as_messages  # a config, data, device or checkpoint mistake: its message, no traceback
def main(cfg: DictConfig) -> float | None:
    from segkit.runs.resume import resumed_config  # torch and Lightning load after the config checks
    from segkit.tasks.train import optimized_value, train

    cfg = resumed_config(cfg)  # `ckpt_path=last`: the interrupted run's own config
    return optimized_value(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    register_resolvers()
    check_overrides("train")  # a misspelled key fails here, before Hydra composes
    main()
