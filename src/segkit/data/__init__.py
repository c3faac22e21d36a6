"""Datasets and LightningDataModules. The data config is the one source of class facts."""

from segkit.data.datamodule import SegDataModule
from segkit.data.synthetic import SyntheticShapes, SyntheticDataModule

__all__ = ["SegDataModule", "SyntheticShapes", "SyntheticDataModule"]
