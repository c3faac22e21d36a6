"""The LightningDataModule every dataset shares: loaders, and the class facts the model and metrics need."""

from __future__ import annotations

from typing import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from segkit.data.dataset import collate

SPLITS = ("train", "val", "test")


class SegDataModule(L.LightningDataModule):
    """Subclasses implement `make_dataset(split)`, returning items `{"image": float (C,H,W) in [0,1],
    "mask": long (H,W)}`; everything else (loaders, workers, class facts) lives here."""

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str],
        palette: Sequence[Sequence[int]],
        in_channels: int = 3,
        ignore_index: int = 255,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        crop_size: Sequence[int] | None = None,
    ) -> None:
        """`crop_size` (H, W): the size of training images (the crop the augmentation pipelines take)."""
        super().__init__()
        if len(class_names) != num_classes or len(palette) != num_classes:
            raise ValueError(
                f"data.num_classes is {num_classes} but data.class_names has {len(class_names)} entries and "
                f"data.palette {len(palette)}. Fix: give one name and one RGB colour per class."
            )
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.palette = [list(c) for c in palette]
        self.in_channels = in_channels
        self.ignore_index = ignore_index
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.crop_size = list(crop_size) if crop_size else None
        self.datasets: dict[str, Dataset] = {}

    def make_dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, SPLITS):
            if split not in self.datasets:
                self.datasets[split] = self.make_dataset(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        if len(dataset) == 0:
            raise ValueError(
                f"The {split} split of {type(self).__name__} is empty. Fix: check the data config "
                f"(python -m segkit.data.check shows what it finds), or run with test=false if there is no test split."
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            # BatchNorm cannot train on a batch of one: never end an epoch with a lone sample.
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
