"""Images/s that the configured datamodule's training loader delivers with N workers: decoding, augmentation
and collation, without a model, to see whether loading or the model is the bottleneck."""

from __future__ import annotations

import itertools
import time
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

# What each worker count measures, once per repeat.
FIGURES = ("img_s", "ms_per_batch")


def bench_loading(cfg: DictConfig) -> list[dict[str, Any]]:
    """One row per worker count; `img_s` and `ms_per_batch` are lists with one value per repeat (the worker counts
    take turns within each repeat, so a drift of the machine hits them alike)."""
    rows = [
        {"data": None, "workers": int(workers), "batch_size": None, "img_s": [], "ms_per_batch": []}
        for workers in cfg.workers
    ]
    for _ in range(max(1, int(cfg.repeats))):
        for row in rows:
            datamodule = instantiate(cfg.data, num_workers=row["workers"])
            datamodule.setup("fit")
            batches = itertools.chain.from_iterable(itertools.repeat(datamodule.train_dataloader()))
            for _ in range(cfg.warmup_steps):  # worker start-up and first reads
                next(batches)
            start, images = time.perf_counter(), 0
            for _ in range(cfg.steps):
                images += len(next(batches)["image"])
            seconds = time.perf_counter() - start
            row.update(data=type(datamodule).__name__, batch_size=datamodule.batch_size)
            row["img_s"].append(images / seconds)
            row["ms_per_batch"].append(1000 * seconds / cfg.steps)
    return rows
