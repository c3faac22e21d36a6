"""segkit: semantic-segmentation experiments with Hydra, Lightning, timm and torchmetrics.

Importing segkit (or any part of it) has no side effect: the `${segkit.*}` config resolvers are registered by
`segkit.config.hydra_setup.register_resolvers()`, which the entry scripts call before Hydra composes.
"""

__version__ = "0.1.0"
