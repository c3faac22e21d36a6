"""A tiled TIFF written band of rows by band of rows, never held whole: the masks and probabilities of large images.

tifffile writes a tiled page from an iterator of tiles in order (a row of tiles, left to right, then the next row).
The rows arrive from the blending engine in bands of any height, so they are gathered until a row of tiles is full,
cut into tiles and handed to tifffile's writer, which runs in a thread of its own and pulls them from a short queue:
memory is a row of tiles by the image's width, and compression overlaps the next windows' inference. The file is
written through segkit.runs.atomic (a temporary file beside it, renamed when complete), so a failed image leaves
no half-written mask.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import tifffile

from segkit.runs.atomic import atomic_open

TILE = 256
_END = object()


class _Abandoned(Exception):
    """The caller failed before the end: the temporary file goes, the target stays as it was."""


# Past this many bytes of pixels a classic TIFF's 32-bit offsets may overflow: BigTIFF (QGIS and GDAL read both).
CLASSIC_LIMIT = 2**31


class TiledTiffStream:
    """Writes a (height, width[, bands]) image as a tiled, zlib-compressed TIFF from consecutive bands of rows.

    Args:
        path: the file to write (its folder is made).
        height, width: the image's size.
        dtype: the pixels' type.
        bands: samples per pixel (1: a grey or palette image (H, W); more: bands (H, W, bands), one per class).
        colormap: a palette image's (3, 256) uint16 colours, or None.
        extratags: tifffile extra tags (code, dtype, count, value, writeonce): a GeoTIFF's georeference.
        tile: the tiles' side.

    Example:
        >>> import numpy as np
        >>> from segkit.reports.tiled_tiff import TiledTiffStream
        >>> with TiledTiffStream("mask.tif", 600, 500, np.uint8) as out:  # doctest: +SKIP
        ...     out.write_rows(np.zeros((300, 500), np.uint8))
        ...     out.write_rows(np.ones((300, 500), np.uint8))
    """

    def __init__(
        self,
        path: str | Path,
        height: int,
        width: int,
        dtype: Any,
        bands: int = 1,
        colormap: np.ndarray | None = None,
        extratags: Sequence[tuple] = (),
        tile: int = TILE,
    ) -> None:
        self.path = Path(path)
        self.height, self.width, self.bands, self.tile = height, width, bands, tile
        self.dtype = np.dtype(dtype)
        self._pending: list[np.ndarray] = []
        self._pending_rows = self._written_rows = 0
        self._tiles: queue.Queue = queue.Queue(maxsize=2 * -(-width // tile))
        self._error: BaseException | None = None
        self._decided = threading.Event()  # close() has said whether to keep the file
        self._keep = False
        shape = (height, width) if bands == 1 else (height, width, bands)
        options: dict[str, Any] = {
            "shape": shape,
            "dtype": self.dtype,
            "tile": (tile, tile),
            "compression": "zlib",
            "photometric": "palette" if colormap is not None else "minisblack",
            "extratags": list(extratags),
            "metadata": None,
        }
        if colormap is not None:
            options["colormap"] = colormap
        if bands > 1:
            options["planarconfig"] = "contig"
        bigtiff = height * width * bands * self.dtype.itemsize > CLASSIC_LIMIT
        self._thread = threading.Thread(target=self._write, args=(bigtiff, options), daemon=True)
        self._thread.start()

    def _write(self, bigtiff: bool, options: dict[str, Any]) -> None:
        try:
            with atomic_open(self.path, "wb") as file:
                with tifffile.TiffWriter(file, bigtiff=bigtiff) as tif:
                    tif.write(self._drain(), **options)
                self._decided.wait()
                if not self._keep:
                    raise _Abandoned
        except _Abandoned:
            pass
        except BaseException as err:  # noqa: BLE001  (re-raised in the caller's thread)
            self._error = err

    def _drain(self) -> Iterator[np.ndarray]:
        while (tile := self._tiles.get()) is not _END:
            yield tile

    def _put(self, item: Any) -> None:
        """Hands a tile (or the end) to the writer thread; a writer that failed fails the caller here."""
        while True:
            if self._error is not None or not self._thread.is_alive():
                if item is _END:
                    return
                raise self._error or RuntimeError(f"{self.path}: the TIFF writer stopped")
            try:
                self._tiles.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def write_rows(self, rows: np.ndarray) -> None:
        """The next rows, (h, width) or (h, width, bands), top to bottom."""
        self._pending.append(rows)
        self._pending_rows += rows.shape[0]
        while self._pending_rows >= self.tile or (
            self._pending_rows and self._written_rows + self._pending_rows == self.height
        ):
            self._tile_row(min(self.tile, self._pending_rows))

    def _tile_row(self, count: int) -> None:
        band = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        head, rest = band[:count], band[count:]
        self._pending, self._pending_rows = ([rest] if len(rest) else []), len(rest)
        self._written_rows += count
        for x in range(0, self.width, self.tile):
            tile = np.zeros((self.tile, self.tile, *head.shape[2:]), dtype=self.dtype)
            part = head[:, x : x + self.tile]
            tile[: part.shape[0], : part.shape[1]] = part
            self._put(tile)

    def close(self, complete: bool = True) -> None:
        """Ends the file: in place when every row was written and `complete`, else no file at all."""
        incomplete = self._written_rows != self.height
        self._keep = complete and not incomplete
        self._put(_END)
        self._decided.set()
        self._thread.join()
        if complete and incomplete:
            raise ValueError(f"{self.path}: {self._written_rows} of {self.height} rows were written")
        if complete and self._error is not None:
            raise self._error

    def __enter__(self) -> TiledTiffStream:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(complete=exc_type is None)
