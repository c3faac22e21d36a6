"""Which classes each training image holds, for `data.sampling=class_balanced` (segkit.data.sampling): measured once
at start-up from the masks alone (in the loader's workers), and cached as JSON under `data.sampling_cache` (default
`<paths.log_dir>/cache`, beside the data check's run directories, writable when the data folder is not), keyed by a
fingerprint of the mask files (paths, sizes, modification times) and the class and encoding settings: a changed,
added or removed file, or another encoding, measures again.

A mask is (H, W) class ids with ignore_index (multiclass, binary), or (C, H, W) of 0/1 per class with ignore_index
for unknown (multi-label): an image holds class c when a pixel equals c, or when a pixel of channel c is 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def mask_presence(mask: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    """(num_classes,) booleans: the classes `mask` holds. (H, W) class ids (ignore_index and any value outside
    0..num_classes-1 hold nothing) or (C, H, W) of 0/1 per class (anything but 1, ignore_index included, holds
    nothing).

    Example:
        >>> import numpy as np
        >>> mask_presence(np.array([[0, 2], [255, 2]]), 3).tolist()
        [True, False, True]
        >>> mask_presence(np.array([[[1, 0]], [[255, 255]], [[0, 1]]]), 3).tolist()  # (C, H, W)
        [True, False, True]
    """
    mask = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if mask.ndim == 2:
        values = mask.ravel().astype(np.int64, copy=False)
        values = values[(values >= 0) & (values < num_classes)]
        return np.bincount(values, minlength=num_classes)[:num_classes] > 0
    if mask.ndim == 3 and mask.shape[0] == num_classes:
        return (mask.reshape(num_classes, -1) == 1).any(axis=1)
    raise ValueError(
        f"A mask of shape {tuple(mask.shape)}: expected (H, W) class ids or ({num_classes}, H, W) 0/1 per class."
    )


class ItemMasks(Dataset):
    """The masks of a dataset whose items are `{"mask": ...}` (read whole: the embedded synthetic data, or any
    dataset without augmentation)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]["mask"]


class _Presence(Dataset):
    def __init__(self, masks: Dataset, num_classes: int) -> None:
        self.masks = masks
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index: int) -> np.ndarray:
        return mask_presence(self.masks[index], self.num_classes)


def measure_presence(masks: Dataset, num_classes: int, num_workers: int = 0) -> np.ndarray:
    """(len(masks), num_classes) booleans, read in `num_workers` DataLoader workers (0: this process)."""
    loader = DataLoader(
        _Presence(masks, num_classes),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_as_is,
        # Ordered and unseeded by the run: workers only read.
        generator=torch.Generator().manual_seed(0),
    )
    rows = list(loader)
    return np.stack(rows).astype(bool) if rows else np.zeros((0, num_classes), dtype=bool)


def _as_is(item: Any) -> Any:
    return item


def file_stats(paths: Sequence[Path]) -> list[list[Any]]:
    """[path, size, mtime in ns] of each file (-1, -1 for one that cannot be read): what the fingerprint holds."""
    out = []
    for path in paths:
        try:
            stat = os.stat(path)
            out.append([str(path), stat.st_size, stat.st_mtime_ns])
        except OSError:
            out.append([str(path), -1, -1])
    return out


def fingerprint(facts: dict[str, Any]) -> str:
    """sha256 of the facts, as canonical JSON."""
    text = json.dumps({"version": CACHE_VERSION, **facts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(folder: str | Path, key: str) -> Path:
    return Path(folder).expanduser() / f"class_presence-{key[:16]}.json"


def load_presence(path: Path, key: str, num_images: int, num_classes: int) -> np.ndarray | None:
    """The cached presence, or None when there is none, it is unreadable or it was measured for other files or
    settings."""
    try:
        record = json.loads(path.read_text())
        if record.get("fingerprint") != key:
            return None
        presence = np.zeros((num_images, num_classes), dtype=bool)
        classes = record["present"]
        if len(classes) != num_images:
            return None
        for row, ids in zip(presence, classes):
            row[list(ids)] = True
        return presence
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def save_presence(path: Path, key: str, presence: np.ndarray, **facts: Any) -> None:
    """Writes the cache (a failed write only costs a measurement next time). Readers check the fingerprint and the
    size, so a file cut short by a crash is measured again, never trusted."""
    record = {
        "fingerprint": key,
        **facts,
        "images": int(len(presence)),
        "images_per_class": presence.sum(axis=0).astype(int).tolist(),
        "present": [np.flatnonzero(row).tolist() for row in presence],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    except OSError as err:
        log.warning("class_balanced sampling: could not write the class-presence cache %s (%s)", path, err)
