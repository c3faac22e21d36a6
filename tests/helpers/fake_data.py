"""Small datasets written to disk by the tests, in the layouts the data configs read."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

MEMBRANE = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "isbi2012-membrane"
VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12)
THREE_CLASSES = ["data.num_classes=3", "data.class_names=[a,b,c]", "data.palette=[[0,0,0],[255,0,0],[0,255,0]]"]


def folder_overrides(root: Path, *extra: str) -> list[str]:
    """`data=folder` on `root` (images/, masks/), every pair in the train split, three classes."""
    return [
        "data=folder",
        f"data.root={root}",
        "data.splits={train:1.0,val:null}",
        *THREE_CLASSES,
        "data.num_workers=0",
        *extra,
    ]


def save(path: Path, array: np.ndarray, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if palette is not None:
        img = img.convert("P")
        img.putpalette(palette)
    img.save(path)
    return path


def blocks(rng: np.random.Generator, size=(24, 32), values=(0, 1, 2)) -> np.ndarray:
    """A mask of rectangles holding each of `values`, so that every value is present."""
    h, w = size
    mask = np.full(size, values[0], dtype=np.uint8)
    for i, v in enumerate(values[1:], start=1):
        y, x = rng.integers(0, h // 2), (i * w) // len(values)
        mask[y : y + h // 2, x : x + w // len(values)] = v
    return mask


def image_for(mask: np.ndarray, rng: np.random.Generator, channels: int = 3) -> np.ndarray:
    """An image whose pixel values encode the mask (class c -> brightness ~ 40 c), plus noise."""
    base = (mask.astype(np.int32) % 6) * 40 + rng.integers(0, 20, mask.shape)
    image = np.repeat(base[:, :, None], channels, axis=2) if channels > 1 else base
    return image.clip(0, 255).astype(np.uint8)


def copy_membrane(dest: Path, count: int = 10) -> Path:
    """The first `count` membrane slices and labels, copied so a test may break them."""
    for sub in ("image", "label"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shutil.copy(MEMBRANE / sub / f"{i}.png", dest / sub / f"{i}.png")
    return dest
