"""segkit: semantic-segmentation experiments with Hydra, Lightning, timm and torchmetrics."""

__version__ = "0.1.0"
