"""See what the model sees (see conf/browse_data.yaml):

    python browse_data.py data=membrane data.root=/path [split=train] [num_samples=16] [columns=4]

Writes a PNG grid of samples as the datamodule delivers them (after the split's augmentation), each shown as
image | mask over image in the data config's palette, with a legend; ignored pixels are white.
"""

import hydra
from omegaconf import DictConfig

from segkit.config.checks import check_overrides
from segkit.config.hydra_setup import register_resolvers
from segkit.errors import refusals_as_messages


@hydra.main(version_base="1.3", config_path="conf", config_name="browse_data")
@refusals_as_messages  # a config, data, device or checkpoint mistake: its message, no traceback
def main(cfg: DictConfig) -> None:
    from segkit.tasks.browse_data import browse  # the data stack loads after the config checks

    browse(cfg)


if __name__ == "__main__":
    register_resolvers()
    check_overrides("browse_data")  # a misspelled key fails here, before Hydra composes
    main()
