"""Train a model: `python train.py model=unet backbone=efficientnet_b0` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from segkit.resume import resumed_config
from segkit.tasks.train import optimized_value, train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    cfg = resumed_config(cfg)  # `ckpt_path=last`: the interrupted run's own config
    return optimized_value(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
