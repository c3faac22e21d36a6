"""All of segkit's drawing, as plain functions of arrays: palette colouring, overlays, side-by-side panels, grids
and legends, palette PNGs of class-id masks, the confusion-matrix heatmap and a sweep's bar chart. The callbacks,
reports and commands that show them only save or log what these return."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

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


def colorize_labels(
    mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """A multi-label mask (C, H, W) as colours (H, W, 3), the mean of the colours of each pixel's labels (black where
    it has none, `ignore_colour(palette)` where every label is ignored), and where it has at least one label (H, W)."""
    on = (mask == 1).astype(np.float32)
    count = on.sum(0)
    colour = np.einsum("chw,ck->hwk", on, np.asarray(palette, dtype=np.float32)[: len(mask)])
    colour = (colour / np.maximum(count, 1)[..., None]).round().astype(np.uint8)
    if ignore_index is not None:
        colour[(mask == ignore_index).all(0)] = ignore_colour(palette)
    return colour, count > 0


def overlay(rgb: np.ndarray, mask: np.ndarray, palette, ignore_index: int | None, alpha: float = 0.5) -> np.ndarray:
    """The mask's class colours blended over the image; ignored pixels opaque in `ignore_colour(palette)`. A
    multi-label mask (C, H, W) blends the mean colour of each pixel's labels where it has any, and shows ignored
    only where every label is unknown."""
    if mask.ndim == 3:
        colour, labelled = colorize_labels(mask, palette, ignore_index)
        ignored = (mask == ignore_index).all(0) if ignore_index is not None else None
    else:
        colour, labelled = colorize(mask, palette, ignore_index), None
        ignored = mask == ignore_index if ignore_index is not None else None
    blended = ((1 - alpha) * rgb.astype(np.float32) + alpha * colour.astype(np.float32)).round().astype(np.uint8)
    if labelled is not None:  # a pixel with no label keeps the image as it is
        blended[~labelled] = rgb[~labelled]
    if ignored is not None:
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


def save_grey_png(path: Path, mask: np.ndarray) -> None:
    """A mode-L PNG of a 0/1 mask as 0/255: how binary masks are usually stored (and read back with
    mask_encoding=values, mask_values=[0, 255])."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask > 0).astype(np.uint8) * 255, mode="L").save(path, format="PNG")


def save_index_png(path: Path, mask: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """A mode-P PNG: pixel values are class ids, the palette colours them."""
    if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
        raise ValueError(f"{path}: class ids outside 0..255 do not fit a palette PNG.")
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [c for colour in palette for c in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")  # not from the name: `...png` has no extension to Pillow


def confusion_heatmap(confmat: np.ndarray, names: Sequence[str], cell: int = 0) -> Image.Image:
    """Each row (a ground-truth class) normalised to sum to 1, white (0) to dark blue (1), values written in
    the cells while they fit. A multi-label task's (C, 2, 2) counts: one 2 x 2 map per label, side by side."""
    if confmat.ndim == 3:
        tiles = [
            np.asarray(confusion_heatmap(m, [f"not {name}", str(name)], cell=48)) for m, name in zip(confmat, names)
        ]
        return Image.fromarray(grid(tiles, columns=min(len(tiles), 3)))
    n = len(names)
    cell = cell or max(12, min(48, 720 // max(n, 1)))
    rows = confmat.sum(axis=1, keepdims=True)
    norm = np.divide(confmat, rows, out=np.zeros_like(confmat, dtype=float), where=rows > 0)
    label_w = 8 + 7 * max(len(str(name)) for name in names)
    top = 24
    title = "rows: ground truth, columns: prediction (each row sums to 1)"
    image = Image.new("RGB", (max(label_w + n * cell + 10, 12 + 6 * len(title)), top + n * cell + label_w), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), title, fill="black")
    for i in range(n):
        for j in range(n):
            v = float(norm[i, j])
            colour = tuple(int(255 - v * (255 - c)) for c in (8, 48, 107))
            x, y = label_w + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=(220, 220, 220))
            if cell >= 30:
                draw.text((x + 3, y + cell // 2 - 5), f"{v:.2f}", fill="white" if v > 0.5 else "black")
        draw.text((4, top + i * cell + cell // 2 - 5), str(names[i]), fill="black")
    column_labels = Image.new("RGB", (label_w, n * cell), "white")
    label_draw = ImageDraw.Draw(column_labels)
    for j, name in enumerate(names):
        label_draw.text((4, j * cell + cell // 2 - 5), str(name), fill="black")
    image.paste(column_labels.rotate(90, expand=True), (label_w, top + n * cell + 2))
    return image


def bar_chart(rows: list[dict[str, Any]], metric: str, label_keys: list[str]) -> Image.Image:
    """One horizontal bar per job, longest first, labelled with the job's swept values."""
    labels = [f"{r['job']}: " + ", ".join(f"{k}={r[k]}" for k in label_keys) for r in rows]
    values = [r[metric] for r in rows]
    finite = [v for v in values if not math.isnan(v)]
    top = max(finite) if finite else 1.0
    label_w, bar_w, row_h = 8 + 6 * max(len(label) for label in labels), 360, 20
    image = Image.new("RGB", (label_w + bar_w + 70, 28 + row_h * len(rows)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 6), f"{metric} per job", fill="black")
    for i, (label, value) in enumerate(zip(labels, values)):
        y = 28 + i * row_h
        draw.text((4, y + 4), label, fill="black")
        if not math.isnan(value):
            length = int(bar_w * value / top) if top > 0 else 0
            draw.rectangle([label_w, y + 3, label_w + length, y + row_h - 3], fill=(0, 130, 200))
            draw.text((label_w + length + 4, y + 4), f"{value:.4f}", fill="black")
        else:
            draw.text((label_w, y + 4), "no result", fill=(200, 0, 0))
    return image
