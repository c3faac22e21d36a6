"""Images to predict on: a file or a folder of them, read like training images, batched by size.

A file that cannot be read is left out, not fatal: `ImageBatches.failed` holds the ones whose header cannot be read,
and a file that fails later (a truncated body) is simply missing from the batches; `read_failure` says why."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from segkit.data.files import IMAGE_SUFFIXES, DataError, broken_link, image_scale, read_image, read_size


def find_images(source: str | Path) -> list[tuple[Path, str]]:
    """(file, name) pairs: a file is named by its stem, files under a folder by their relative path."""
    source = Path(source).expanduser()
    if source.is_file():
        return [(source, source.stem)]
    if not source.is_dir():
        link = broken_link(source)
        raise DataError(link or f"input={source} does not exist. Fix: pass an image file or a folder of images.")
    # Broken links are kept: they fail as unreadable inputs with their target named, instead of vanishing.
    files = sorted(
        p for p in source.rglob("*") if (p.is_file() or broken_link(p)) and p.suffix.lower() in IMAGE_SUFFIXES
    )
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


class ImageBatches(IterableDataset):
    """Batches `{"image": (B, C, H, W), "name": [str]}` of images of one size (read from the file headers), so that
    any folder batches cleanly. Unreadable files are left out instead of stopping the run: those whose header
    fails are in `failed` (path -> reason) from the start; one whose pixels fail is dropped from its batch (a batch
    left empty is skipped), and the caller finds it missing from the output. With DataLoader workers, each worker
    reads every `num_workers`-th batch."""

    def __init__(self, images: ImageFiles, batch_size: int) -> None:
        self.images = images
        self.failed: dict[Path, str] = {}
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, (path, _) in enumerate(images.files):
            try:
                groups[read_size(path)].append(index)
            except DataError as err:
                self.failed[path] = str(err)
        self.batches = [
            indices[i : i + batch_size] for indices in groups.values() for i in range(0, len(indices), batch_size)
        ]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        mine = self.batches[worker.id :: worker.num_workers] if worker is not None else self.batches
        for indices in mine:
            items = []
            for index in indices:
                try:
                    items.append(self.images[index])
                except DataError:
                    continue  # reported by the caller, who re-reads what is missing from the output
            if items:
                images, names = [item["image"] for item in items], [item["name"] for item in items]
                yield {"image": torch.stack(images), "name": names}


def read_failure(path: Path, in_channels: int) -> str:
    """Why `path` could not be predicted: its reading error, read again (the workers that met it only skip it)."""
    try:
        read_image(path, in_channels)
    except DataError as err:
        return str(err)
    return f"{path}: read, but no mask was written for it (another input has the same name?)."
