"""The embedded default dataset: shapes drawn on the fly, deterministic for a seed, nothing on disk.

Every object and the background get a random colour, so colour says nothing about the class; a
model has to use shape (disc, square, triangle) and texture (flat, striped, checkered). For a multi-label task
(`data=synthetic_multilabel`) the shapes are the labels and are drawn translucent, so that where they overlap a
pixel carries both labels and both textures show through.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from segkit.data.datamodule import SegDataModule
from segkit.data.sampling import SampleKey, split_key

SHAPES = ("disc", "square", "triangle")
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}


class SyntheticShapes(Dataset):
    def __init__(
        self,
        num_samples: int,
        image_size: Sequence[int] = (64, 64),
        num_classes: int = 4,
        in_channels: int = 3,
        max_objects: int = 6,
        noise: float = 0.05,
        seed: int = 0,
        stream: int = 0,
        multilabel: bool = False,
        shape_weights: Sequence[float] | None = None,
    ) -> None:
        low, high = (1, len(SHAPES)) if multilabel else (2, len(SHAPES) + 1)
        if not low <= num_classes <= high:
            what = "labels, one per shape" if multilabel else "classes: background and"
            raise ValueError(
                f"SyntheticShapes draws {what} up to {len(SHAPES)} shapes {SHAPES}; num_classes={num_classes} is "
                f"outside {low}..{high}."
            )
        self.multilabel = multilabel
        self.num_samples = num_samples
        self.size = (int(image_size[0]), int(image_size[1]))
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.max_objects = max_objects
        self.noise = noise
        self.seed = seed
        self.stream = stream  # separates the splits drawn from one seed
        # How often each shape class is drawn, relative to the others; None: alike (and the draws of before).
        self.shape_probs = None
        if shape_weights is not None:
            weights = np.asarray(shape_weights, dtype=np.float64)
            shapes = num_classes if multilabel else num_classes - 1
            if len(weights) != shapes or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(
                    f"data.shape_weights={list(shape_weights)}: give one weight >= 0 per shape class "
                    f"({shapes} for num_classes={num_classes}), not all 0."
                )
            self.shape_probs = weights / weights.sum()

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, key: int | SampleKey) -> dict[str, torch.Tensor]:
        index, _ = split_key(key)  # drawn, not augmented: the image is a function of the index alone
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        image, mask = self.render(np.random.default_rng([self.seed, self.stream, index]))
        return {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask), "name": f"{index:05d}"}

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        channels = self.in_channels
        # Background: a random colour with a gentle random gradient.
        gradient = (rng.uniform(-0.3, 0.3) * xx / w + rng.uniform(-0.3, 0.3) * yy / h)[None]
        image = rng.uniform(0.15, 0.85, (channels, 1, 1)).astype(np.float32) + gradient
        mask = np.zeros((self.num_classes, h, w) if self.multilabel else (h, w), dtype=np.int64)
        scale = min(h, w)
        first = 0 if self.multilabel else 1  # label 0 is the disc; class 0 the background
        for _ in range(rng.integers(1, self.max_objects + 1)):
            if self.shape_probs is None:
                cls = int(rng.integers(first, self.num_classes))
            else:
                cls = first + int(rng.choice(len(self.shape_probs), p=self.shape_probs))
            radius = rng.uniform(0.12, 0.3) * scale
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            theta = rng.uniform(0, 2 * np.pi)
            u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
            v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
            region, texture = _shape(SHAPES[cls - first], u, v, radius, rng)
            colour = rng.uniform(0.0, 1.0, (channels, 1)).astype(np.float32)
            drawn = colour * (0.55 + 0.45 * texture[region])[None]
            if self.multilabel:  # translucent: what lies below shows through
                image[:, region] = 0.5 * image[:, region] + 0.5 * drawn
                mask[cls][region] = 1
            else:
                image[:, region] = drawn
                mask[region] = cls
        image = image + self.noise * rng.standard_normal(image.shape).astype(np.float32)
        return np.clip(image, 0.0, 1.0).astype(np.float32), mask


def _shape(kind: str, u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator):
    """Region and texture (values in [0, 1]) of one object in its own rotated frame (u, v)."""
    period = rng.uniform(5.0, 9.0)
    if kind == "disc":
        return u**2 + v**2 < r**2, np.ones_like(u)
    if kind == "square":
        side = 0.85 * r
        stripes = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
        return (np.abs(u) < side) & (np.abs(v) < side), stripes
    # An equilateral triangle, inside three half-planes; its inradius of 0.75 r gives it about the area of the
    # square and the disc, so that no class is rarer than the others.
    inside = np.ones_like(u, dtype=bool)
    for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
        inside &= u * np.cos(angle) + v * np.sin(angle) < 0.75 * r
    checks = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    return inside, checks


class SyntheticDataModule(SegDataModule):
    """The default dataset (`data=synthetic`): discs, squares and triangles drawn on the fly in random colours and
    textures, deterministic for a seed; nothing on disk, no download.

    Args:
        num_train: training images.
        num_val: validation images.
        num_test: test images.
        image_size: (H, W) of every image.
        max_objects: at most this many shapes an image.
        noise: the standard deviation of the Gaussian noise added.
        seed: the draw (the splits are drawn apart from it).
        shape_weights: how often each shape (disc, square, triangle, as many as it draws) is drawn, relative to the
            others, e.g. [10, 3, 1] for a rare triangle; None: alike.
        **common: `SegDataModule`'s arguments; num_classes from 2 (background and discs) to 4, or with
            task=multilabel from 1 to 3 labels (disc, square, triangle), and masks (C, H, W).

    Example:
        >>> from segkit.data import SyntheticDataModule
        >>> data = SyntheticDataModule(
        ...     num_train=8, image_size=(40, 56), num_classes=4, class_names=["bg", "disc", "square", "triangle"],
        ...     palette=[[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200]], batch_size=4,
        ... )
        >>> data.setup("fit")
        >>> batch = next(iter(data.train_dataloader()))
        >>> batch["image"].shape, batch["mask"].shape
        (torch.Size([4, 3, 40, 56]), torch.Size([4, 40, 56]))
    """

    def __init__(
        self,
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        image_size: Sequence[int] = (64, 64),
        max_objects: int = 6,
        noise: float = 0.05,
        seed: int = 0,
        shape_weights: Sequence[float] | None = None,
        **common,
    ) -> None:
        super().__init__(**common)
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.options = dict(image_size=image_size, max_objects=max_objects, noise=noise, shape_weights=shape_weights)
        self.seed = seed

    def make_dataset(self, split: str) -> SyntheticShapes:
        return SyntheticShapes(
            self.counts[split],
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            seed=self.seed,
            stream=SPLIT_STREAMS[split],
            multilabel=self.task.multilabel,
            **self.options,
        )
