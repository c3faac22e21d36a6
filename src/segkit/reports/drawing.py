"""Pictures of segmentations, as plain functions of arrays: palette colouring, overlays, side-by-side panels,
grids and legends, and palette PNGs of class-id masks. The callbacks that use them are in segkit.callbacks."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

# Ignored pixels (ignore_index: void, padding) are drawn opaque, in the first of these colours that is far from every
# class colour of the palette: never a colour a class uses, and never blended with the image (a blend of a dark
# padding and white reads as a grey that a palette may use, CamVid's sky).
IGNORE_CANDIDATES = ((255, 0, 255), (255, 255, 255), (0, 255, 255), (255, 255, 0), (255, 128, 0), (0, 255, 0))
IGNORE_COLOUR = IGNORE_CANDIDATES[0]
_MIN_DISTANCE = 60.0


def ignore_colour(palette: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """The colour of ignored pixels for this palette: the first candidate at least _MIN_DISTANCE (RGB, Euclidean)
    from every class colour, else the candidate farthest from all of them. Never a class's own colour."""
    colours = np.asarray(palette, dtype=np.float64).reshape(-1, 3)
    best, best_distance = IGNORE_CANDIDATES[0], -1.0
    for candidate in IGNORE_CANDIDATES:
        distance = float(np.sqrt(((colours - candidate) ** 2).sum(axis=1)).min()) if len(colours) else np.inf
        if distance >= _MIN_DISTANCE:
            return candidate
        if distance > best_distance:
            best, best_distance = candidate, distance
    return best


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, 3) uint8; one channel is shown grey, more than three are cut to three."""
    image = image.detach().float().cpu().clamp(0, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    elif image.shape[0] == 2:
        image = torch.cat([image, image[:1]])
    return (image[:3].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int | None) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    if ignore_index is not None and 0 <= ignore_index < 256:
        lut[ignore_index] = ignore_colour(palette)
    return lut[np.clip(mask, 0, 255)]


def overlay(rgb: np.ndarray, mask: np.ndarray, palette, ignore_index: int | None, alpha: float = 0.5) -> np.ndarray:
    """The mask's class colours blended over the image; ignored pixels opaque in `ignore_colour(palette)`."""
    colour = colorize(mask, palette, ignore_index)
    blended = ((1 - alpha) * rgb.astype(np.float32) + alpha * colour.astype(np.float32)).round().astype(np.uint8)
    if ignore_index is not None:
        ignored = mask == ignore_index
        blended[ignored] = colour[ignored]
    return blended


def sample_panel(image, target, pred, palette, ignore_index) -> np.ndarray:
    """image | ground truth over image | prediction over image, side by side."""
    rgb = to_rgb(image)
    target, pred = target.cpu().numpy(), pred.cpu().numpy()
    return np.concatenate(
        [rgb, overlay(rgb, target, palette, ignore_index), overlay(rgb, pred, palette, ignore_index)], axis=1
    )


def grid(tiles: Sequence[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    """Tiles (H, W, 3) of any sizes in rows of `columns`, each cell as large as the largest tile, white gaps."""
    h = max(t.shape[0] for t in tiles) + gap
    w = max(t.shape[1] for t in tiles) + gap
    rows = -(-len(tiles) // columns)
    canvas = np.full((rows * h, min(columns, len(tiles)) * w, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        y, x = (i // columns) * h, (i % columns) * w
        canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return canvas


def legend(class_names: Sequence[str], palette, width: int, ignore_index: int | None = None) -> np.ndarray:
    """A strip naming each class next to its colour, and the colour of ignored pixels (see ignore_colour)."""
    entries = list(zip(class_names, palette))
    if ignore_index is not None:
        entries.append((f"ignore ({ignore_index})", ignore_colour(palette)))
    cell, line = 140, 18
    per_row = max(1, width // cell)
    rows = -(-len(entries) // per_row)
    strip = Image.new("RGB", (max(width, cell), rows * line + 4), "white")
    draw = ImageDraw.Draw(strip)
    for i, (name, colour) in enumerate(entries):
        x, y = (i % per_row) * cell + 4, (i // per_row) * line + 4
        draw.rectangle([x, y, x + 12, y + 12], fill=tuple(int(c) for c in colour), outline="black")
        draw.text((x + 18, y), str(name)[:18], fill="black")
    return np.asarray(strip)


def save_index_png(path: Path, mask: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """A mode-P PNG: pixel values are class ids, the palette colours them."""
    if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
        raise ValueError(f"{path}: class ids outside 0..255 do not fit a palette PNG.")
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [c for colour in palette for c in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")  # not from the name: `...png` has no extension to Pillow
