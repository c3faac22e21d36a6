"""Large images read in bands of rows, never whole when they are TIFFs: what predict.py's windowed path reads.

A TIFF (tiled or striped, chunky or planar, GeoTIFF included) is read through tifffile's own page decoder: only
the tiles or strips a band of rows touches are read from the file and decoded, and the last band's segments are
kept for the next band (consecutive bands of windows overlap). Memory is a band of rows (about a window's height)
by the image's width. Other formats (PNG, JPEG, BMP) cannot be read in parts by Pillow: they are read whole, as
today, and only their predictions are windowed. A TIFF's georeference tags are kept for the mask (`geo_tags`).
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import tifffile

from segkit.data.files import (
    TIFF_SUFFIXES,
    DataError,
    check_channels,
    fit_channels,
    image_scale,
    read_image,
    read_size,
    unreadable,
)

# GeoTIFF's georeference (ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory, GeoDoubleParams,
# GeoAsciiParams): copied to the masks so that they lie on the image in a GIS. GDAL_NODATA (42113) is not: the
# image's no-data value means nothing for class ids, where 0 is a class.
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)
_JPEG = {6, 7, 34892, 33007}
_READ_ERRORS = (OSError, ValueError, NotImplementedError, tifffile.TiffFileError, zlib.error, EOFError, IndexError)
Item = TypeVar("Item")


def split_by_size(
    items: Sequence[Item], path: Callable[[Item], Path], is_large: Callable[[tuple[int, int]], bool]
) -> tuple[list[Item], list[Item]]:
    """(small, large) items by the (H, W) in their image's header; an unreadable header stays with the small ones,
    whose reading reports it by name."""
    small, large = [], []
    for item in items:
        try:
            size = read_size(path(item))
        except DataError:
            small.append(item)
            continue
        (large if is_large(size) else small).append(item)
    return small, large


class RasterRows:
    """An image file read in bands of rows: `rows(y0, y1)` -> (y1 - y0, W, C) floats in [0, 1], C the model's
    `in_channels` (one channel repeated for three, as in training). Use as a context manager (a TIFF stays open).

    Args:
        path: the image file (a TIFF, when `in_channels` is None).
        in_channels: the model's input channels; None: the file's own (a mask's `raw_rows`).
        image_max_value: the value that maps to 1.0 (data.image_max_value); by default the dtype's range.

    Example:
        >>> from segkit.data.rasters import RasterRows
        >>> with RasterRows("scene.tif", in_channels=3) as image:  # doctest: +SKIP
        ...     band = image.rows(0, 512)  # (512, image.width, 3) float32
    """

    def __init__(self, path: str | Path, in_channels: int | None, image_max_value: float | None = None) -> None:
        self.path = Path(path)
        self.in_channels = in_channels
        self.image_max_value = image_max_value
        self._tif: tifffile.TiffFile | None = None
        self._cache: dict[int, np.ndarray] = {}
        self.geo_tags: list[tuple[int, int, int, Any, bool]] = []
        if self.path.suffix.lower() in TIFF_SUFFIXES:
            self._open_tiff()
        else:  # Pillow decodes whole files only
            self._array = read_image(self.path, in_channels)
            self.height, self.width = self._array.shape[:2]
            self.dtype = self._array.dtype

    def _open_tiff(self) -> None:
        try:
            self._tif = tifffile.TiffFile(self.path)
            page = self._tif.pages.first
            separate, depth, height, width, contig = page.shaped
        except FileNotFoundError:
            raise DataError(f"{self.path}: file not found.", kind="missing file", path=self.path) from None
        except _READ_ERRORS as err:
            self.close()
            raise unreadable(self.path, err) from err
        if depth != 1:
            self.close()
            raise DataError(
                f"{self.path}: a volume of depth {depth}; expected an image (H, W[, C]).", kind="image shape"
            )
        self.height, self.width, self.dtype = int(height), int(width), page.dtype
        self._page, self._separate, self._contig = page, int(separate), int(contig)
        self.channels = self._separate * self._contig
        # Full-size pages after the first: a stack (of a multi-label mask's planes), which rows() does not read;
        # a pyramid's reduced levels (a cloud-optimized GeoTIFF's overviews) are not a stack.
        pages = self._tif.pages
        self.stacked = len(pages) > 1 and not pages[1].is_reduced
        if self.in_channels is not None:
            check_channels(self.path, self.channels, self.in_channels)
        self._segment_height = min(page.tilelength if page.is_tiled else page.rowsperstrip, self.height)
        self._across = math.ceil(self.width / page.tilewidth) if page.is_tiled else 1
        self._down = math.ceil(self.height / self._segment_height)
        self._decode_args: dict[str, Any] = {"_fullsize": page.is_tiled}
        if page.compression in _JPEG:
            self._decode_args |= {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}
        for code in GEO_TAGS:
            tag = page.tags.get(code)
            if tag is not None:
                self.geo_tags.append((code, int(tag.dtype), tag.count, tag.value, True))

    def __enter__(self) -> RasterRows:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None
        self._cache.clear()

    @property
    def scale(self) -> float:
        return image_scale(np.dtype(self.dtype), self.image_max_value)

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """The rows y0:y1, (y1 - y0, W, in_channels) float32 in [0, 1], scaled as training scales images."""
        rows = self.raw_rows(y0, y1).astype(np.float32)  # one float copy, scaled in place
        rows /= np.float32(self.scale)
        return fit_channels(rows, self.in_channels)

    def raw_rows(self, y0: int, y1: int) -> np.ndarray:
        """The rows y0:y1 in the file's own dtype, (y1 - y0, W, C) with the file's channels."""
        if self._tif is None:
            return self._array[y0:y1]
        first, last = y0 // self._segment_height, (y1 - 1) // self._segment_height
        for index in [i for i in self._cache if i < first]:  # bands go down: rows above are not read again
            del self._cache[index]
        pieces = []
        for index in range(first, last + 1):
            if index not in self._cache:
                self._cache[index] = self._segment_row(index)
            pieces.append(self._cache[index])
        band = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        top = first * self._segment_height
        return band[y0 - top : y1 - top]

    def _segment_row(self, index: int) -> np.ndarray:
        """One row of tiles (or one strip), every sample plane, decoded: (rows, W, C)."""
        page, fh = self._page, self._tif.filehandle
        top = index * self._segment_height
        height = min(self._segment_height, self.height - top)
        out = np.zeros((self._separate, height, self.width, self._contig), dtype=self.dtype)
        try:
            for plane in range(self._separate):
                for column in range(self._across):
                    segment = (plane * self._down + index) * self._across + column
                    offset, size = page.dataoffsets[segment], page.databytecounts[segment]
                    data = None
                    if offset and size:
                        with fh.lock:
                            fh.seek(offset)
                            data = fh.read(size)
                        if len(data) != size:
                            raise EOFError(f"segment {segment} is cut short ({len(data)} of {size} bytes)")
                    decoded, (_, _, _, x, _), _ = page.decode(data, segment, **self._decode_args)
                    if decoded is None:  # an empty segment: no data, left 0
                        continue
                    decoded = decoded[0]  # (rows, columns, contig samples) of depth 0
                    rows, columns = min(decoded.shape[0], height), min(decoded.shape[1], self.width - x)
                    out[plane, :rows, x : x + columns] = decoded[:rows, :columns]
        except _READ_ERRORS as err:
            raise unreadable(self.path, err) from err
        return np.moveaxis(out, 0, -2).reshape(height, self.width, self._separate * self._contig)
