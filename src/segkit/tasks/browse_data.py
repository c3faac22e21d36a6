"""What the model sees (`python browse_data.py`, see conf/browse_data.yaml): a PNG grid of samples as the
datamodule delivers them (after the split's augmentation), each shown as image | mask over image in the data
config's palette, with a legend; ignored pixels (void, padding) are drawn opaque in a colour no class of the
palette uses, named in the legend (segkit.reports.drawing.ignore_colour).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from segkit.reports.drawing import grid, legend, overlay, to_rgb


def browse(cfg: DictConfig) -> Path:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup({"train": "fit", "val": "validate", "test": "test"}[cfg.split])
    dataset = datamodule.datasets[cfg.split]
    if len(dataset) == 0:
        raise SystemExit(f"The {cfg.split} split is empty.")
    tiles = []
    for index in np.linspace(0, len(dataset) - 1, min(cfg.num_samples, len(dataset))).astype(int):
        item = dataset[int(index)]
        rgb = to_rgb(item["image"])
        mask = item["mask"].numpy()
        tiles.append(np.concatenate([rgb, overlay(rgb, mask, datamodule.palette, datamodule.ignore_index)], axis=1))
    picture = grid(tiles, cfg.columns)
    key = legend(datamodule.class_names, datamodule.palette, picture.shape[1], datamodule.ignore_index)
    picture = np.concatenate([key, _pad_width(picture, key.shape[1])], axis=0)
    path = Path(cfg.paths.output_dir) / f"browse_{cfg.split}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)
    print(f"{len(tiles)} {cfg.split} samples: {path}")
    return path


def _pad_width(picture: np.ndarray, width: int) -> np.ndarray:
    if picture.shape[1] >= width:
        return picture
    pad = np.full((picture.shape[0], width - picture.shape[1], 3), 255, dtype=np.uint8)
    return np.concatenate([picture, pad], axis=1)
