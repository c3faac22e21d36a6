"""Reading images and masks from disk, with errors that name the file and say what to do.

PNG, JPEG and BMP go through Pillow; TIFF through tifffile, which keeps 16-bit and multi-band data as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from segkit.errors import Refusal

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
# Pillow modes that hold one 8-bit value per channel; anything else (16-bit, 32-bit, float) is read as it is.
EIGHT_BIT_MODES = {"1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


class DataError(Refusal, ValueError):
    """A problem with one file of a dataset; the message names the file and the fix. `kind` (a short tag) and
    `path` let the data check sort problems without reading the message."""

    def __init__(self, message: str, kind: str = "bad file", path: Path | str | None = None) -> None:
        # One positional argument: DataLoader workers re-raise an exception as `type(exc)(message)`.
        super().__init__(message)
        self.kind = kind
        self.path = str(path) if path is not None else None


def broken_link(path: Path) -> str | None:
    """The message for a symbolic link whose target is gone, else None. Such a link is no file (`is_file()` is
    False), so without this it would pass for a file that was never there."""
    path = Path(path)
    if not path.is_symlink() or path.exists():
        return None
    target = Path(os.readlink(path))
    target = target if target.is_absolute() else path.parent / target
    return (
        f"{path}: a broken link; its target {target} does not exist. Fix: restore the target (a moved or unmounted "
        f"folder?), point the link at the file, or remove the link (and its pair)."
    )


def _not_found(path: Path) -> DataError:
    message = broken_link(path)
    if message is not None:
        return DataError(message, kind="broken link", path=path)
    return DataError(f"{path}: file not found.", kind="missing file", path=path)


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def unreadable(path: Path, err: Exception) -> DataError:
    return DataError(
        f"{path}: cannot be read ({type(err).__name__}: {err}). The file is truncated, corrupt or not an image. "
        f"Fix: re-export or re-download it, or remove it (and its pair) from the dataset.",
        kind="unreadable",
        path=path,
    )


def read_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":  # a multi-label stack: (C, H, W) or (H, W, C), channels the fewer
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            if len(shape) == 3:
                shape = shape[:2] if shape[-1] < shape[0] else shape[1:]
            return int(shape[0]), int(shape[1])
        if _is_tiff(path):
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)
        with Image.open(path) as img:
            return img.height, img.width
    except FileNotFoundError:
        raise _not_found(path) from None
    except (OSError, UnidentifiedImageError, ValueError, tifffile.TiffFileError) as err:
        raise unreadable(path, err) from err


def _decode(path: Path, pil_mode: str | None = None) -> np.ndarray:
    try:
        if _is_tiff(path):
            return np.asarray(tifffile.imread(path))
        with Image.open(path) as img:
            img.load()  # decodes every byte: a truncated file fails here, not in a worker later
            if pil_mode is not None and img.mode in EIGHT_BIT_MODES and img.mode != pil_mode:
                img = img.convert(pil_mode)
            return np.array(img)  # a writable copy: torch tensors may share its memory
    except FileNotFoundError:
        raise _not_found(path) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, tifffile.TiffFileError) as err:
        raise unreadable(path, err) from err


def read_image(path: Path, in_channels: int) -> np.ndarray:
    """(H, W, C) array with C == in_channels, in the file's own dtype (uint8, uint16, float...).

    8-bit files are converted by Pillow to what the model takes (grey to RGB, RGBA to RGB, palette to RGB); a
    one-channel image of any depth is repeated for a three-channel model; anything else must match."""
    path = Path(path)
    pil_mode = {1: "L", 3: "RGB"}.get(in_channels)
    image = _decode(path, pil_mode)
    if image.ndim == 2:
        image = image[:, :, None]
    elif image.ndim == 3 and image.shape[0] == in_channels and image.shape[2] != in_channels:
        image = np.moveaxis(image, 0, -1)  # planar TIFF: (C, H, W)
    if image.ndim != 3:
        raise DataError(
            f"{path}: an image of shape {image.shape} (a stack or volume?); expected (H, W[, C]).",
            kind="image shape",
            path=path,
        )
    check_channels(path, image.shape[2], in_channels)
    return fit_channels(image, in_channels)


def check_channels(path: Path, channels: int, in_channels: int) -> None:
    """A file's channels fit the model: the same number, or one to repeat for a three-channel model."""
    if channels != in_channels and not (channels == 1 and in_channels == 3):
        raise DataError(
            f"{path}: has {channels} channel(s) but data.in_channels is {in_channels}. "
            f"Fix: set data.in_channels={channels} (the backbone's first layer adapts), or convert the file.",
            kind="channels",
            path=path,
        )


def fit_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """(H, W, C) pixels as the model takes them (`check_channels` passed): one channel repeated for three."""
    if image.shape[2] == 1 and in_channels == 3:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def read_mask(path: Path, rgb: bool = False) -> np.ndarray:
    """(H, W) integer array of the stored values, or (H, W, 3) uint8 colours when `rgb`.

    Palette PNGs give their indices (not their colours), as VOC and most tools intend."""
    path = Path(path)
    return stored_mask(decode_mask(path, rgb), path, rgb)


def decode_mask(path: Path, rgb: bool = False) -> np.ndarray:
    """A mask file's pixels as stored, not yet checked: what a large mask read whole keeps (a byte a pixel where
    `read_mask`'s ids take eight), checked band by band with `stored_mask`."""
    return _decode(Path(path), "RGB" if rgb else None)


def stored_mask(mask: np.ndarray, path: Path, rgb: bool = False) -> np.ndarray:
    """Decoded mask pixels (all of a file, or a band of its rows) as `read_mask` gives them, checked."""
    if rgb:
        if mask.ndim == 2 or mask.shape[-1] != 3:
            raise DataError(
                f"{path}: data.mask_encoding is rgb but the mask has shape {mask.shape}. "
                f"Fix: use mask_encoding=index (or values) for single-channel masks.",
                kind="mask encoding",
                path=path,
            )
        return mask
    if mask.ndim == 3 and mask.shape[2] in (3, 4):
        colours = mask[:, :, :3]
        if (colours == colours[:, :, :1]).all():  # grey saved as RGB
            return colours[:, :, 0]
        raise DataError(
            f"{path}: a colour mask, but data.mask_encoding is not rgb. Fix: set data.mask_encoding=rgb "
            f"(colours are mapped to classes through data.mask_colors or data.palette), or save index masks.",
            kind="mask encoding",
            path=path,
        )
    if mask.ndim != 2:
        message = f"{path}: a mask of shape {mask.shape}; expected one channel (H, W)."
        raise DataError(message, kind="mask shape", path=path)
    return whole_numbers(mask, path, "store class ids")


def whole_numbers(mask: np.ndarray, path: Path, fix: str) -> np.ndarray:
    """A mask's stored values as int64, refused (naming `fix`) where a float value is not a whole number."""
    if not np.issubdtype(mask.dtype, np.integer) and not np.issubdtype(mask.dtype, np.bool_):
        if not np.array_equal(mask, np.round(mask)):
            raise DataError(
                f"{path}: mask values are not whole numbers ({mask.dtype}). Fix: {fix}.",
                kind="bad mask values",
                path=path,
            )
    return mask.astype(np.int64, copy=False)


def read_mask_stack(path: Path) -> np.ndarray:
    """A multi-label mask file's stored values as an integer array: every page/band of a TIFF, or an NPY array
    (read as data: no pickled objects)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            stack = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise _not_found(path) from None
        except (OSError, ValueError) as err:
            raise unreadable(path, err) from err
    else:
        stack = _decode(path)
    return whole_numbers(stack, path, "store 0/1 per label")


def image_scale(dtype: np.dtype, max_value: float | None = None) -> float:
    """The value that maps to 1.0: the configured one, else the dtype's full range (floats are taken as is)."""
    if max_value is not None:
        return float(max_value)
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0
