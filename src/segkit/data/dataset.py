"""A dataset of (image file, mask file) pairs: read, encode, check, augment, and hand over as tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from segkit.data.encoding import INVALID, MaskEncoding
from segkit.data.files import DataError, image_scale, read_image, read_mask, read_mask_stack
from segkit.data.sampling import SampleKey, split_key

if TYPE_CHECKING:
    from segkit.data.transforms import SeededPipeline


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path  # a multi-label task's one file of every label, or its first label's file
    name: str  # the file's key within the dataset (relative path without suffix): stable across runs
    label_masks: tuple[Path, ...] = ()  # a multi-label task's file per label (masks/<label>/<key>.png), in order


class SegmentationFiles(Dataset):
    """Items are `{"image": float (C, H, W) in [0, 1], "mask": long (H, W), "name": str}`; with `num_labels` (a
    multi-label task) the mask is (num_labels, H, W), 1 where the pixel has the label, 0 where not, and `encoding`
    maps each label's stored values to those two (or ignore_index).

    Every item is checked as it is read, so a file that breaks after start-up fails with its name (DataLoader
    workers pass the message on), not as a shape error in the model or an all-ignore batch."""

    def __init__(
        self,
        samples: Sequence[Sample],
        encoding: MaskEncoding,
        in_channels: int,
        transform: SeededPipeline | None = None,
        image_max_value: float | None = None,
        repeat: int = 1,
        num_labels: int | None = None,
    ) -> None:
        """`repeat` > 1 lists every sample that many times: longer epochs for small datasets."""
        self.samples = list(samples)
        self.num_labels = num_labels
        self.repeat = repeat
        self.encoding = encoding
        self.in_channels = in_channels
        self.transform = transform
        self.image_max_value = image_max_value
        self.mask_dtype = _smallest_dtype(encoding.num_classes, encoding.ignore_index)

    def __len__(self) -> int:
        return len(self.samples) * self.repeat

    @property
    def num_classes(self) -> int:
        """The classes (or labels) a mask counts: its histogram's length."""
        return self.num_labels or self.encoding.num_classes

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W, C) in its file's dtype and class ids (H, W) int64 (multi-label: (num_labels, H, W) of 0, 1
        and ignore_index), both checked."""
        sample = self.samples[index % len(self.samples)]
        image = read_image(sample.image, self.in_channels)
        return image, self.read_mask(sample, image.shape[:2])

    def load_mask(self, index: int) -> np.ndarray:
        """The mask of one sample as `load` gives it, checked, without reading its image."""
        return self.read_mask(self.samples[index % len(self.samples)])

    def read_mask(self, sample: Sample, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """A sample's mask encoded and checked (against its image's size where given)."""
        if self.num_labels is None:
            stored = read_mask(sample.mask, rgb=self.encoding.rgb)
            if image_size is not None:
                check_sizes(sample, image_size, stored.shape[:2])
            mask = self.encoding(stored)
            check_mask(mask, stored, sample.mask, self.encoding)
            return mask
        planes = []
        for path, stored in read_label_masks(sample, self.num_labels):
            if image_size is not None:
                check_sizes(Sample(sample.image, path, sample.name), image_size, stored.shape[-2:])
            plane = self.encoding(stored)
            check_mask(plane, stored, path, self.encoding, every_pixel_ignored_is_fine=True)
            planes.append(plane)
        mask = np.concatenate([p.reshape(-1, *p.shape[-2:]) for p in planes])
        if self.encoding.ignore_index is not None and (mask == self.encoding.ignore_index).all():
            check_mask(mask, mask, sample.mask, self.encoding)  # names the file: no label known anywhere
        return mask

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        index, seed = split_key(key)
        image, mask = self.load(index)
        if image.dtype != np.uint8:  # albumentations works on uint8 or float32 in [0, 1]
            image = image.astype(np.float32) / image_scale(image.dtype, self.image_max_value)
        if self.transform is not None:
            # albumentations takes a multi-label mask's planes as channels (H, W, C)
            stacked = mask.ndim == 3
            mask = np.moveaxis(mask, 0, -1) if stacked else mask
            out = self.transform(image=image, mask=mask.astype(self.mask_dtype), seed=seed)
            image, mask = out["image"], np.moveaxis(out["mask"], -1, 0) if stacked else out["mask"]
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        tensor = tensor.float().div_(255.0) if tensor.dtype == torch.uint8 else tensor.float()
        return {
            "image": tensor,
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
            "name": self.samples[index % len(self.samples)].name,
        }


def check_sizes(sample: Sample, image_size: tuple[int, int], mask_size: tuple[int, int]) -> None:
    if tuple(image_size) != tuple(mask_size):
        raise DataError(
            f"{sample.mask}: mask is {mask_size[0]}x{mask_size[1]} (HxW) but its image {sample.image} is "
            f"{image_size[0]}x{image_size[1]}. Fix: the mask must have the image's size; re-export it.",
            kind="size mismatch",
            path=sample.mask,
        )


def read_label_masks(sample: Sample, num_labels: int) -> list[tuple[Path, np.ndarray]]:
    """A multi-label sample's stored values, (path, array) pairs: one (H, W) per label file, or the one file's
    (num_labels, H, W), from a multi-page/multi-band TIFF or an NPY array, (C, H, W) or (H, W, C)."""
    if sample.label_masks:
        return [(path, read_mask(path)) for path in sample.label_masks]
    return [(sample.mask, label_planes(read_mask_stack(sample.mask), sample.mask, num_labels))]


def label_planes(stack: np.ndarray, path: Path, num_labels: int) -> np.ndarray:
    """A multi-label file's array as (num_labels, H, W) (a view where it was (H, W, C)), or its shape refused."""
    if stack.ndim == 3 and stack.shape[0] != num_labels and stack.shape[-1] == num_labels:
        stack = np.moveaxis(stack, -1, 0)
    if stack.ndim != 3 or stack.shape[0] != num_labels:
        raise DataError(
            f"{path}: a multi-label mask of shape {stack.shape}; expected {num_labels} planes, one per label "
            f"((C, H, W) or (H, W, C) with C = data.num_classes = {num_labels}). Fix: store one plane per label in "
            "data.class_names' order, or a folder per label (data.label_layout=folders).",
            kind="mask shape",
            path=path,
        )
    return stack


def check_mask(
    mask: np.ndarray, stored: np.ndarray, path: Path, encoding: MaskEncoding, every_pixel_ignored_is_fine: bool = False
) -> None:
    invalid = mask == INVALID
    if invalid.any():
        hint = " JPEG compression changes mask values at edges: save masks as PNG." if _is_jpeg(path) else ""
        raise DataError(
            f"{path}: mask values {{{encoding.describe_invalid(stored, mask)}}} ({int(invalid.sum())} pixels) are not "
            f"known; expected {encoding.expected()}. Fix: set data.mask_encoding / data.mask_values / "
            f"data.label_map to match how the masks are stored, or check data.num_classes.{hint}",
            kind="bad mask values",
            path=path,
        )
    if not every_pixel_ignored_is_fine and encoding.ignore_index is not None and (mask == encoding.ignore_index).all():
        raise unlabelled(path, encoding)


def unlabelled(path: Path, encoding: MaskEncoding) -> DataError:
    return DataError(
        f"{path}: no labelled pixel: every pixel is ignore_index {encoding.ignore_index} after encoding. "
        f"Fix: check data.mask_encoding (e.g. 0/255 masks need mask_encoding=values, mask_values=[0,255]), "
        f"or remove the file from the split.",
        kind="unlabelled mask",
        path=path,
    )


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """torch's default collate, with a clear error when images of one batch differ in size."""
    sizes = {tuple(item["image"].shape) for item in items}
    if len(sizes) > 1:
        shown = ", ".join(f"{item.get('name', '?')}: {tuple(item['image'].shape[1:])}" for item in items[:4])
        raise DataError(
            f"Images of one batch differ in size ({shown}). Fix: crop or resize to one size in the pipeline "
            f"(data.train_transforms / data.eval_transforms), or use data.eval_batch_size=1 for evaluation.",
            kind="batch sizes",
        )
    return default_collate(items)


def _is_jpeg(path: Path) -> bool:
    return Path(path).suffix.lower() in (".jpg", ".jpeg")


def _smallest_dtype(num_classes: int, ignore_index: int | None) -> np.dtype:
    """Masks travel through OpenCV in the smallest integer type that holds every id (OpenCV has no int64)."""
    low = min(0, ignore_index if ignore_index is not None else 0)
    high = max(num_classes - 1, ignore_index if ignore_index is not None else 0)
    for dtype in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    raise ValueError(f"Class ids {low}..{high} do not fit in int32.")
