"""Augmentation pipelines: albumentations transforms from the config, applied to image and mask together.

Albumentations resamples masks with nearest neighbour; padding values for masks come from the config (the data
configs pass `fill_mask: ${data.ignore_index}`), so padded pixels are never learned as a class.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Sequence

# Albumentations asks pypi.org for a newer release of itself when imported (waiting up to 2 s without a network): a
# run reaches no server unasked. A NO_ALBUMENTATIONS_UPDATE of the user's own wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pydantic import Field  # noqa: E402


class CatMaxRatioCrop(A.RandomCrop):
    """A random crop that retries until no single class fills more than `cat_max_ratio` of the crop's labelled
    pixels (MMSegmentation's `cat_max_ratio`), so crops of a street are not all road. Ignored pixels do not count;
    after `max_tries` the last crop is kept. In `conf/augment/*.yaml`.

    Args:
        height: the crop's height.
        width: the crop's width.
        cat_max_ratio: the largest share of the labelled pixels one class may fill (1: any crop).
        ignore_index: mask value left out of the shares.
        max_tries: crops drawn at most.
        pad_if_needed, pad_position, border_mode, fill, fill_mask, p: as albumentations' `RandomCrop` (pad masks
            with `fill_mask: ${data.ignore_index}`, so padding is never learned as a class).

    Example:
        >>> import numpy as np
        >>> from segkit.data.transforms import CatMaxRatioCrop
        >>> crop = CatMaxRatioCrop(32, 32, cat_max_ratio=0.75, pad_if_needed=True, fill_mask=255)
        >>> out = crop(image=np.zeros((20, 40, 3), np.uint8), mask=np.zeros((20, 40), np.uint8))
        >>> out["image"].shape, int(out["mask"].max())
        ((32, 32, 3), 255)
    """

    class InitSchema(A.RandomCrop.InitSchema):
        cat_max_ratio: Annotated[float, Field(gt=0, le=1)]
        ignore_index: int | None
        max_tries: Annotated[int, Field(ge=1)]

    def __init__(
        self,
        height: int,
        width: int,
        cat_max_ratio: float = 0.75,
        ignore_index: int | None = 255,
        max_tries: int = 10,
        pad_if_needed: bool = False,
        pad_position: str = "center",
        border_mode: int = cv2.BORDER_CONSTANT,
        fill: float = 0.0,
        fill_mask: float = 0.0,
        p: float = 1.0,
    ) -> None:
        # Every argument is spelled out: albumentations validates them against the signature.
        super().__init__(
            height=height,
            width=width,
            pad_if_needed=pad_if_needed,
            pad_position=pad_position,
            border_mode=border_mode,
            fill=fill,
            fill_mask=fill_mask,
            p=p,
        )
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.max_tries = max_tries

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        chosen = super().get_params_dependent_on_data(params, data)
        mask = data.get("mask")
        if mask is None or self.cat_max_ratio >= 1:
            return chosen
        pad = chosen["pad_params"]
        if pad is not None:
            fill = self.ignore_index if self.ignore_index is not None else self.fill_mask
            widths = ((pad["pad_top"], pad["pad_bottom"]), (pad["pad_left"], pad["pad_right"]))
            mask = np.pad(mask, widths + ((0, 0),) * (mask.ndim - 2), constant_values=fill)
        for _ in range(self.max_tries):
            x_min, y_min, x_max, y_max = chosen["crop_coords"]
            crop = mask[y_min:y_max, x_min:x_max]
            if self.ignore_index is not None:
                crop = crop[crop != self.ignore_index]
            counts = np.unique(crop, return_counts=True)[1]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
            chosen = super().get_params_dependent_on_data(params, data)
        return chosen

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return (*super().get_transform_init_args_names(), "cat_max_ratio", "ignore_index", "max_tries")


def build_pipeline(transforms: Sequence[Any] | None) -> A.Compose | None:
    """An albumentations Compose of already-built transforms (Hydra instantiates the list from the config)."""
    if not transforms:
        return None
    return A.Compose(list(transforms))


class SeededPipeline:
    """An albumentations pipeline whose randomness is given per sample.

    The training sampler hands every draw a seed of (run seed, epoch, index) (`segkit.data.sampling`), so crops and
    flips do not depend on which worker reads the sample or on what ran before: a resumed run repeats them exactly.
    Without a seed (browsing, a user's own loader) it falls back to torch's per-worker seed, which differs between
    workers and epochs: albumentations keeps its own random state, which every DataLoader worker would otherwise
    inherit unchanged, so that the workers would crop and flip alike.
    """

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline
        self._worker_seed: int | None = None

    def __call__(self, seed: int | None = None, **data: Any) -> dict[str, Any]:
        if seed is not None:
            self.pipeline.set_random_seed(seed)
            self._worker_seed = None
        elif torch.initial_seed() != self._worker_seed:
            self._worker_seed = torch.initial_seed()
            self.pipeline.set_random_seed(self._worker_seed % 2**32)
        return self.pipeline(**data)
