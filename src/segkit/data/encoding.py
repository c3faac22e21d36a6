"""Mask encodings: how the values stored in a mask file become class indices.

Every encoding is strict: a stored value it does not know is an error naming the file and the values, never a
silently ignored pixel. The result holds class ids 0..num_classes-1 and ignore_index only.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

ENCODINGS = ("index", "values", "label_map", "rgb")
INVALID = -1


class MaskEncoding:
    """
    - index: the stored value is the class id (ignore_index stays ignore); `reduce_zero_label` first turns 0 into
      ignore and shifts the rest down by one (ADE20K).
    - values: `values[i]` is stored for class i, e.g. [0, 255] for binary masks.
    - label_map: a table stored id -> class id (or ignore_index), e.g. Cityscapes ids -> train ids. Every stored
      id must be listed.
    - rgb: `colors[i]` (an RGB triple) is class i; `ignore_color` marks ignored pixels.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        encoding: str = "index",
        values: Sequence[int] | None = None,
        label_map: Mapping[int, int] | None = None,
        colors: Sequence[Sequence[int]] | None = None,
        ignore_color: Sequence[int] | None = None,
        reduce_zero_label: bool = False,
    ) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"data.mask_encoding={encoding!r} is not one of {ENCODINGS}.")
        needs = {"values": values, "label_map": label_map, "rgb": colors}
        if encoding in needs and not needs[encoding]:
            key = {"values": "mask_values", "label_map": "label_map", "rgb": "mask_colors (or palette)"}[encoding]
            raise ValueError(f"data.mask_encoding={encoding} needs data.{key}.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.encoding = encoding
        self.rgb = encoding == "rgb"
        if encoding == "index":
            table = {c: c for c in range(num_classes)}
            if reduce_zero_label:
                table = {c + 1: c for c in range(num_classes)} | {0: ignore_index}
        elif encoding == "values":
            if len(values) != num_classes:
                raise ValueError(
                    f"data.mask_values has {len(values)} values but data.num_classes is {num_classes}: "
                    f"give the stored value of each class, in class order."
                )
            table = {int(v): c for c, v in enumerate(values)}
        elif encoding == "label_map":
            table = {int(k): int(v) for k, v in label_map.items()}
            bad = sorted({v for v in table.values() if not (0 <= v < num_classes or v == ignore_index)})
            if bad:
                raise ValueError(f"data.label_map maps to {bad}, which are neither classes nor ignore_index.")
        else:
            if len(colors) != num_classes:
                raise ValueError(f"data.mask_colors has {len(colors)} colours but data.num_classes is {num_classes}.")
            table = {_pack(c): i for i, c in enumerate(colors)}
            if ignore_color is not None:
                table[_pack(ignore_color)] = ignore_index
        if ignore_index is not None and encoding != "rgb":
            table.setdefault(ignore_index, ignore_index)
        self.table = table
        if self.rgb:  # 24-bit colour keys: a search among the few known colours, not a 16M-entry table
            order = sorted(table)
            self._keys = np.asarray(order, dtype=np.int64)
            self._ids = np.asarray([table[k] for k in order], dtype=np.int64)
        else:
            self._lut = _lookup_table(table)

    def __call__(self, stored: np.ndarray) -> np.ndarray:
        """Class ids (int64) with INVALID (-1) where the stored value is unknown."""
        if self.rgb:
            keys = _pack_array(stored)
            pos = np.clip(np.searchsorted(self._keys, keys), 0, len(self._keys) - 1)
            return np.where(self._keys[pos] == keys, self._ids[pos], INVALID)
        keys = stored.astype(np.int64, copy=False)
        inside = (keys >= 0) & (keys < len(self._lut))
        return np.where(inside, self._lut[np.where(inside, keys, 0)], INVALID)

    def describe_invalid(self, stored: np.ndarray, encoded: np.ndarray, limit: int = 8) -> str:
        bad = stored[encoded == INVALID]
        if self.rgb:
            colours = np.unique(bad.reshape(-1, 3), axis=0)[:limit]
            found = ", ".join(str(tuple(int(x) for x in c)) for c in colours)
        else:
            found = ", ".join(str(int(v)) for v in np.unique(bad)[:limit])
        return found

    def expected(self) -> str:
        if self.rgb:
            return f"the colours of data.mask_colors/palette ({len(self.table)} known)"
        keys = sorted(self.table)
        shown = ", ".join(map(str, keys[:12])) + (", ..." if len(keys) > 12 else "")
        return f"stored values {{{shown}}} ({self.encoding} encoding)"


def _pack(colour: Sequence[int]) -> int:
    r, g, b = (int(x) for x in colour)
    return (r << 16) | (g << 8) | b


def _pack_array(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _lookup_table(table: Mapping[int, int]) -> np.ndarray:
    if any(k < 0 for k in table):
        raise ValueError(f"Stored mask values cannot be negative: {sorted(k for k in table if k < 0)}.")
    lut = np.full(max(table, default=0) + 1, INVALID, dtype=np.int64)
    for stored, cls in table.items():
        lut[stored] = cls
    return lut
