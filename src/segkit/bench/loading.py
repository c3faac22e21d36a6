"""Images/s that the configured datamodule's training loader delivers with N workers: decoding, augmentation
and collation, without a model, to see whether loading or the model is the bottleneck."""

from __future__ import annotations

import itertools
import time
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig


def bench_loading(cfg: DictConfig) -> list[dict[str, Any]]:
    rows = []
    for workers in cfg.workers:
        datamodule = instantiate(cfg.data, num_workers=int(workers))
        datamodule.setup("fit")
        batches = itertools.chain.from_iterable(itertools.repeat(datamodule.train_dataloader()))
        for _ in range(cfg.warmup_steps):  # worker start-up and first reads
            next(batches)
        start, images = time.perf_counter(), 0
        for _ in range(cfg.steps):
            images += len(next(batches)["image"])
        seconds = time.perf_counter() - start
        rows.append({
            "data": type(datamodule).__name__, "workers": int(workers), "batch_size": datamodule.batch_size,
            "img_s": images / seconds, "ms_per_batch": 1000 * seconds / cfg.steps,
        })
    return rows
