"""Images to predict on: a file or a folder of them, read like training images, batched by size."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from segkit.data.files import IMAGE_SUFFIXES, DataError, image_scale, read_image, read_size


def find_images(source: str | Path) -> list[tuple[Path, str]]:
    """(file, name) pairs: a file is named by its stem, files under a folder by their relative path."""
    source = Path(source).expanduser()
    if source.is_file():
        return [(source, source.stem)]
    if not source.is_dir():
        raise DataError(f"input={source} does not exist. Fix: pass an image file or a folder of images.")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"input={source} holds no image ({', '.join(IMAGE_SUFFIXES)}).")
    return [(p, p.relative_to(source).with_suffix("").as_posix()) for p in files]


class ImageFiles(Dataset):
    """Items `{"image": float (C, H, W) in [0, 1], "name": str}`, no mask, no augmentation."""

    def __init__(self, files: list[tuple[Path, str]], in_channels: int, image_max_value: float | None = None):
        self.files = files
        self.in_channels = in_channels
        self.image_max_value = image_max_value

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, name = self.files[index]
        image = read_image(path, self.in_channels)
        scaled = image.astype(np.float32) / image_scale(image.dtype, self.image_max_value)
        return {"image": torch.from_numpy(scaled).permute(2, 0, 1).contiguous(), "name": name}


class SizeBatches(Sampler[list[int]]):
    """Batches of images of one size (read from the file headers), so that any folder batches cleanly."""

    def __init__(self, files: list[tuple[Path, str]], batch_size: int) -> None:
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, (path, _) in enumerate(files):
            groups[read_size(path)].append(index)
        self.batches = [
            indices[i : i + batch_size] for indices in groups.values() for i in range(0, len(indices), batch_size)
        ]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)
