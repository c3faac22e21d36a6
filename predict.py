"""Predict masks: `python predict.py ckpt_path=PATH input=FILE_OR_DIR output=DIR` (see conf/predict.yaml)."""

import hydra
from omegaconf import DictConfig

from segkit.tasks.predict import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
