"""Datasets and LightningDataModules. The data config is the one source of class facts."""

from segkit.data.datamodule import SegDataModule
from segkit.data.filedata import FileDataModule
from segkit.data.layouts import FolderDataModule, ListFileDataModule
from segkit.data.synthetic import SyntheticDataModule, SyntheticShapes

__all__ = [
    "SegDataModule",
    "FileDataModule",
    "FolderDataModule",
    "ListFileDataModule",
    "SyntheticShapes",
    "SyntheticDataModule",
]
