"""Sliding windows blended in a rolling band of rows: one engine for images in memory and images read from disk.

Windows of `crop` every `stride` pixels (the last row and column of windows flush with the image's far edges; an
image smaller than a window padded with zeros and the padding cut off again) are scored batch by batch, each score
weighted by a blend window (`mean`: equal weights; `gaussian`: nnU-Net's, sigma 1/8 of the window; `linear`: a
ramp falling to the window's edges) and summed with the weights' sum. Window rows go top to bottom, so the rows
above the next window row are final once a window row is done: they are divided by their weight and handed on, and
the accumulator only ever holds about one window height of rows. Memory therefore grows with the window, the
batch, the classes and the image's width, never with its height; the same code blends an image held in memory
(`Inference._slide`), so both give the same numbers.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

BLENDS = ("mean", "gaussian", "linear")


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Where windows of `crop` every `stride` start along an axis of `length` (padded to `crop` if shorter): the
    last one flush with the far edge, as MMSegmentation places them."""
    padded = max(length, crop)
    count = math.ceil(max(padded - crop, 0) / stride) + 1
    return [min(i * stride, padded - crop) for i in range(count)]


def _profile(size: int, blend: str) -> torch.Tensor:
    centre = (size - 1) / 2
    positions = torch.arange(size, dtype=torch.float64)
    if blend == "gaussian":  # nnU-Net: sigma = 1/8 of the window, never 0 at the edges
        sigma = size / 8
        return torch.exp(-((positions - centre) ** 2) / (2 * sigma**2))
    if blend == "linear":  # 1 at the centre, falling to 1/ceil(size/2) at the edges
        return torch.minimum(positions + 1, size - positions) / math.ceil(size / 2)
    return torch.ones(size, dtype=torch.float64)


def blend_weight(crop: tuple[int, int], blend: str = "mean") -> torch.Tensor:
    """The (H, W) float32 weight of a window's scores: ones (`mean`), a Gaussian (`gaussian`) or a linear ramp
    (`linear`), as the outer product of one profile per axis, its maximum 1.

    Example:
        >>> from segkit.training.windows import blend_weight
        >>> blend_weight((3, 4), "linear")[1].tolist()
        [0.5, 1.0, 1.0, 0.5]
    """
    if blend not in BLENDS:
        raise ValueError(f"inference.blend={blend!r} is not one of {BLENDS}.")
    weight = torch.outer(_profile(crop[0], blend), _profile(crop[1], blend))
    return (weight / weight.max()).float()


def blend_rows(
    read: Callable[[int, int], torch.Tensor],
    height: int,
    width: int,
    crop: tuple[int, int],
    stride: tuple[int, int],
    score: Callable[[torch.Tensor], torch.Tensor],
    weight: torch.Tensor,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    on_window_row: Callable[[], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Blends the windows of one image, yielding its final rows top to bottom as they are completed.

    Args:
        read: `read(y0, y1)` -> the image's rows y0:y1, a float tensor (C_in, y1 - y0, width).
        height, width: the image's size.
        crop, stride: the windows' (H, W) and steps.
        score: windows (N, C_in, crop_h, crop_w) -> scores (N, C, crop_h, crop_w), the values blended.
        weight: (crop_h, crop_w) blend weight (`blend_weight`).
        batch_size: windows per `score` call.
        device: where windows are scored and blended (the rows read are moved there).
        on_window_row: called after each window row (a progress bar's tick).

    Yields:
        (y0, blended): the weighted mean of the scores of the rows y0:y0 + h, (C, h, width) float32; consecutive,
        together covering 0:height.
    """
    (ch, cw), (sh, sw) = crop, stride
    ys, xs = window_starts(height, ch, sh), window_starts(width, cw, sw)
    padded_width = max(width, cw)
    weight = weight.to(device)
    total = count = None  # a fixed buffer of window + stride rows: its row 0 is the image's row `base`
    base = 0
    for r, y in enumerate(ys):
        rows = read(y, min(y + ch, height)).float()
        if rows.shape[1] != ch or width != padded_width:  # only an image smaller than a window is padded
            rows = F.pad(rows, (0, padded_width - width, 0, ch - rows.shape[1]))
        rows = rows.to(device)
        top = y - base
        for i in range(0, len(xs), batch_size):  # each batch's scores added at once: a row's are never all held
            columns = xs[i : i + batch_size]
            scores = score(torch.stack([rows[:, :, x : x + cw] for x in columns])).float()
            if total is None:
                total = scores.new_zeros((scores.shape[1], ch + sh, padded_width))
                count = scores.new_zeros((1, ch + sh, padded_width))
            for x, out in zip(columns, scores):
                total[:, top : top + ch, x : x + cw] += out * weight
                count[:, top : top + ch, x : x + cw] += weight
        del rows, scores
        final = min(ys[r + 1] if r + 1 < len(ys) else height, height)  # rows above the next window row are done
        if final > base:
            done = final - base
            yield base, total[:, :done, :width] / count[:, :done, :width]
            kept = total.shape[1] - done  # move the rows still open to the top, in place, and clear the rest
            total[:, :kept] = total[:, done:].clone()
            count[:, :kept] = count[:, done:].clone()
            total[:, kept:] = 0
            count[:, kept:] = 0
            base = final
        if on_window_row is not None:
            on_window_row()


def window_rows(height: int, crop: int, stride: int) -> int:
    """How many rows of windows cover `height` (a progress bar's total)."""
    return len(window_starts(height, crop, stride))
