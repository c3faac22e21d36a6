"""Score a checkpoint: `python evaluate.py ckpt_path=PATH [split=test]` (see conf/evaluate.yaml)."""

import hydra
from omegaconf import DictConfig

from segkit.tasks.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
