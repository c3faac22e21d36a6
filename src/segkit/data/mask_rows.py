"""A large image's mask read in bands of rows, encoded and checked as the dataset encodes and checks whole masks
(segkit.data.dataset): what evaluate.py compares the windowed predictions with, band by band.

A TIFF mask is read a band at a time (segkit.data.rasters.RasterRows), a multi-label NPY stack through a memory map;
a PNG (Pillow decodes whole files) or a multi-page TIFF stack is decoded whole, kept as stored (a byte a pixel for
8-bit masks, where the image's floats would take twelve) and handed out, encoded, in bands.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from segkit.data.dataset import Sample, SegmentationFiles, check_mask, check_sizes, label_planes, unlabelled
from segkit.data.files import TIFF_SUFFIXES, DataError, decode_mask, stored_mask, unreadable, whole_numbers
from segkit.data.rasters import RasterRows

Rows = Callable[[int, int], np.ndarray]  # (y0, y1) -> stored values of those rows


class MaskRows:
    """`rows(y0, y1)`: the class ids of a sample's mask rows y0:y1, (h, W) int64, or a multi-label task's (labels,
    h, W) of 0, 1 and ignore_index; unknown values are refused naming the file, as in training. Use as a context
    manager; `finish()` after the last band refuses a mask with no labelled pixel at all.

    Args:
        sample: the image and its mask file(s).
        dataset: the split's dataset: its mask encoding and, for a multi-label task, its number of labels.
        size: the image's (H, W); a mask of another size is refused.
    """

    def __init__(self, sample: Sample, dataset: SegmentationFiles, size: tuple[int, int]) -> None:
        self.sample = sample
        self.encoding = dataset.encoding
        self.num_labels = dataset.num_labels
        self.labelled = 0
        self._files = contextlib.ExitStack()
        try:
            if self.num_labels is None:
                self._readers = [(sample.mask, self._plane(sample.mask, size))]
            elif sample.label_masks:
                self._readers = [(path, self._plane(path, size)) for path in sample.label_masks]
            else:
                self._readers = [(sample.mask, self._stack(size))]
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> MaskRows:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._files.close()

    def rows(self, y0: int, y1: int) -> np.ndarray:
        planes = []
        for path, read in self._readers:
            stored = read(y0, y1)
            encoded = self.encoding(stored)
            check_mask(encoded, stored, path, self.encoding, every_pixel_ignored_is_fine=True)
            planes.append(encoded)
        mask = planes[0] if self.num_labels is None else np.concatenate([p.reshape(-1, *p.shape[-2:]) for p in planes])
        ignore_index = self.encoding.ignore_index
        self.labelled += int(mask.size if ignore_index is None else (mask != ignore_index).sum())
        return mask

    def finish(self) -> None:
        if self.labelled == 0 and self.encoding.ignore_index is not None:
            raise unlabelled(self.sample.mask, self.encoding)

    def _check_size(self, path: Path, size: tuple[int, int], found: tuple[int, int]) -> None:
        check_sizes(Sample(self.sample.image, path, self.sample.name), size, found)

    def _plane(self, path: Path, size: tuple[int, int]) -> Rows:
        """One mask file of one plane (a class-id mask, or one label's), read as `read_mask` reads it."""
        rgb = self.encoding.rgb
        raster = self._raster(path)
        if raster is None:
            whole = decode_mask(path, rgb)  # as stored: checked band by band
            self._check_size(path, size, whole.shape[:2])
            return lambda y0, y1: stored_mask(whole[y0:y1], path, rgb)
        self._check_size(path, size, (raster.height, raster.width))

        def read(y0: int, y1: int) -> np.ndarray:
            band = raster.raw_rows(y0, y1)
            return stored_mask(band[:, :, 0] if band.shape[-1] == 1 else band, path, rgb)

        return read

    def _stack(self, size: tuple[int, int]) -> Rows:
        """A multi-label task's one file of every label's plane: (C, H, W) or (H, W, C)."""
        path, labels = self.sample.mask, self.num_labels
        if path.suffix.lower() == ".npy":
            try:
                stored = np.load(path, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise DataError(f"{path}: file not found.", kind="missing file", path=path) from None
            except (OSError, ValueError) as err:
                raise unreadable(path, err) from err
            stack = label_planes(stored, path, labels)
            self._check_size(path, size, stack.shape[1:])
            return lambda y0, y1: whole_numbers(np.asarray(stack[:, y0:y1]), path, "store 0/1 per label")
        raster = self._raster(path)
        if raster is None:
            whole = label_planes(decode_mask(path), path, labels)  # as stored: checked band by band
            self._check_size(path, size, whole.shape[1:])
            return lambda y0, y1: whole_numbers(whole[:, y0:y1], path, "store 0/1 per label")
        self._check_size(path, size, (raster.height, raster.width))
        if raster.channels != labels:
            shape = (raster.height, raster.width, raster.channels)
            label_planes(np.broadcast_to(np.uint8(0), shape), path, labels)  # refuses, naming the shape

        def read(y0: int, y1: int) -> np.ndarray:
            band = np.moveaxis(raster.raw_rows(y0, y1), -1, 0)
            return whole_numbers(band, path, "store 0/1 per label")

        return read

    def _raster(self, path: Path) -> RasterRows | None:
        """The file as a TIFF read in bands, or None where it is read whole (not a TIFF, or a stack of pages)."""
        if path.suffix.lower() not in TIFF_SUFFIXES:
            return None
        raster = self._files.enter_context(RasterRows(path, None))
        return None if raster.stacked else raster
