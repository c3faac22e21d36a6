"""Export a checkpoint: `python export.py ckpt_path=PATH [formats=[onnx,torch_export]]` (see conf/export.yaml)."""

import hydra
from omegaconf import DictConfig

from segkit.tasks.export import export


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
