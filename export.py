"""Export a checkpoint: `python export.py ckpt_path=PATH [formats=[onnx,torch_export]]` (see conf/export.yaml)."""

import hydra
from omegaconf import DictConfig

from segkit.config.checks import check_overrides, validate
from segkit.config.hydra_setup import register_resolvers
from segkit.errors import refusals_as_messages


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
@refusals_as_messages  # a config, data, device or checkpoint mistake: its message, no traceback
def main(cfg: DictConfig) -> None:
    from segkit.tasks.export import export  # Lightning, ONNX and the models load after the config checks

    export(validate(cfg, "export"))


if __name__ == "__main__":
    register_resolvers()
    check_overrides("export")  # a misspelled key fails here, before Hydra composes
    main()
