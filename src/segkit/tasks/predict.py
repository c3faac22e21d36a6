"""Predict masks for image files with a trained checkpoint: palette PNGs and overlays, batched, on a GPU if any."""

from __future__ import annotations

import warnings
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from segkit.data.dataset import collate
from segkit.data.inputs import ImageFiles, SizeBatches, find_images
from segkit.inference import build_inference
from segkit.tasks.common import plain
from segkit.tasks.evaluate import load_module
from segkit.writers import MaskWriter


def predict(cfg: DictConfig) -> Path:
    module = load_module(cfg.ckpt_path)
    data = module.hparams.data
    module.inference = build_inference(plain(cfg.inference), data)
    files = find_images(cfg.input)
    loader = DataLoader(
        ImageFiles(files, int(data["in_channels"]), data.get("image_max_value")),
        batch_sampler=SizeBatches(files, cfg.batch_size),
        num_workers=cfg.num_workers,
        collate_fn=collate,
    )
    output = Path(cfg.output)
    writer = MaskWriter(
        output / "masks",
        data["palette"],
        overlays_dir=output / "overlays" if cfg.overlays else None,
        ignore_index=data.get("ignore_index"),
    )
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[writer])
    with warnings.catch_warnings():  # SizeBatches returns every index; Lightning cannot know that
        warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    print(f"{writer.written} masks ({module.inference}) in {output / 'masks'}")
    return output
