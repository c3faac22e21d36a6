"""Throughput and memory of the composed model, or of its data loading (see conf/bench.yaml):

    python bench.py [model=unet backbone=efficientnet_b0 batch_sizes=[8,16] precisions=[32-true,bf16-mixed]]
    python bench.py target=data data=membrane data.root=... workers=[0,2,4]
    python bench.py target=gpu    # `make bench-gpu`: the first-GPU suite (conf/bench.yaml `gpu`); exits 0 without CUDA

Prints a table (every figure as the median over `repeats`, with its min-max) and writes bench.json to the run
directory; warns when the spread of the repeats is larger than the effect being measured.
"""

import hydra
from omegaconf import DictConfig

from segkit.config.checks import check_overrides
from segkit.config.hydra_setup import register_resolvers
from segkit.errors import refusals_as_messages


@hydra.main(version_base="1.3", config_path="conf", config_name="bench")
@refusals_as_messages  # a config, data, device or checkpoint mistake: its message, no traceback
def main(cfg: DictConfig) -> None:
    from segkit.tasks.bench import run  # torch and Lightning load after the config checks

    run(cfg)


if __name__ == "__main__":
    register_resolvers()
    check_overrides("bench")  # a misspelled key fails here, before Hydra composes
    main()
