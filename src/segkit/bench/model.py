"""Training and inference throughput of the composed model, and the framework's own overhead.

For each setting (batch size, image size, precision, channels_last, compile) it measures the median step
after warm-up (robust to the odd stalled step of a shared machine), `repeats` times over, alternating:
- `train`: images/s of the real `SegmentationModule` under a Lightning `Trainer` (metrics updated and logged
  at the configured interval, CSV logger on; no progress bar, checkpoints or validation);
- `bare`: images/s of the same network, loss, optimizer and schedule, fed the same tensors by the same
  DataLoader, in a plain PyTorch loop;
- `infer`: images/s of the network in eval mode under `torch.inference_mode`;
and the peak memory of each (CUDA max allocated, or peak RSS on CPU).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader, Dataset

from segkit.bench.measure import StepTimer, autocast, peak_memory_mb, reset_peak_memory
from segkit.data.dataset import collate
from segkit.training.module import build_module
from segkit.training.param_groups import build_optimizer

# What each setting measures, once per repeat.
FIGURES = ("train_img_s", "bare_img_s", "overhead_pct", "infer_img_s", "train_peak_mb", "bare_peak_mb", "infer_peak_mb")


class FixedBatches(Dataset):
    """A few random images and masks, generated once and served `length` times over: every measurement sees
    the same tensors, and one epoch covers the whole run (no epoch ends inside the timed steps, as in real
    epochs of hundreds of steps)."""

    def __init__(self, length: int, count: int, channels: int, size: tuple[int, int], num_classes: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(count, channels, *size, generator=generator)
        self.masks = torch.randint(0, num_classes, (count, *size), generator=generator)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index % len(self.images)], "mask": self.masks[index % len(self.masks)]}


class _TrainTimer(L.Callback):
    """A tick at the start of every step after warm-up, and one at the end: whole steps, data fetch included."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup = warmup
        self.timer = StepTimer(device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            reset_peak_memory(pl_module.device)
        if trainer.global_step >= self.warmup:
            self.timer.tick()

    def on_train_end(self, trainer, pl_module) -> None:
        self.timer.tick()


def _device(cfg: DictConfig) -> torch.device:
    accelerator = cfg.trainer.accelerator
    if accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


def _module(cfg: DictConfig, channels_last: bool, compile_net: bool):
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.model.channels_last = channels_last
        cfg.model.compile = compile_net
    torch.manual_seed(cfg.seed)
    return build_module(cfg)


def measure_lightning(cfg, loader, setting, device, output_dir) -> tuple[float, float]:
    module = _module(cfg, setting["channels_last"], setting["compile"])
    timer = _TrainTimer(cfg.warmup_steps, device)
    trainer = L.Trainer(
        accelerator=device.type if device.type == "cpu" else "gpu",
        devices=1,
        precision=setting["precision"],
        max_steps=cfg.warmup_steps + cfg.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        logger=CSVLogger(output_dir, name="lightning_logs"),
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer.timer.median_step, peak_memory_mb(device)


def measure_bare(cfg, loader, setting, device) -> tuple[float, float]:
    module = _module(cfg, setting["channels_last"], setting["compile"]).to(device)
    net = module.compiled_net if module.compiled_net is not None else module.net
    criterion = module.criterion
    optimizer = build_optimizer(cfg.optimizer, module, instantiate)  # the groups the module's own optimizer has
    total = cfg.warmup_steps + cfg.steps
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer, total_steps=total) if cfg.get("scheduler") else None
    scaler = torch.amp.GradScaler(device.type, enabled=setting["precision"].startswith("16"))
    timer = StepTimer(device)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    net.train()
    for step in range(total):
        if step == cfg.warmup_steps:
            reset_peak_memory(device)
        if step >= cfg.warmup_steps:
            timer.tick()
        batch = next(batches)
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        if setting["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, setting["precision"]):
            logits = net(images)
        loss = criterion(logits, masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
    timer.tick()
    return timer.median_step, peak_memory_mb(device)


@torch.inference_mode()
def measure_inference(cfg, images, setting, device) -> tuple[float, float]:
    module = _module(cfg, setting["channels_last"], setting["compile"]).to(device).eval()
    images = images.to(device)
    timer = StepTimer(device)
    for step in range(cfg.warmup_steps + cfg.steps):
        if step == cfg.warmup_steps:
            reset_peak_memory(device)
        if step >= cfg.warmup_steps:
            timer.tick()
        with autocast(device, setting["precision"]):
            module(images)
    timer.tick()
    return timer.median_step, peak_memory_mb(device)


def settings(cfg: DictConfig) -> list[dict[str, Any]]:
    grid = itertools.product(cfg.batch_sizes, cfg.image_sizes, cfg.precisions, cfg.channels_last, cfg.compile)
    return [
        {
            "batch_size": int(b),
            "image_size": [int(s[0]), int(s[1])],
            "precision": str(p),
            "channels_last": bool(c),
            "compile": bool(k),
        }
        for b, s, p, c, k in grid
    ]


def bench_model(cfg: DictConfig, output_dir) -> list[dict[str, Any]]:
    """One row per setting; each figure a list with one value per repeat (segkit.bench.run reports their median
    and min-max). The overhead is paired: each repeat's Lightning step against the bare step measured right after
    it, so a drift of the machine between repeats moves both."""
    device = _device(cfg)
    rows = []
    for setting in settings(cfg):
        batch, size = setting["batch_size"], tuple(setting["image_size"])
        total = cfg.warmup_steps + cfg.steps
        data = FixedBatches(batch * total, batch * 2, cfg.data.in_channels, size, cfg.data.num_classes, cfg.seed)
        loader = DataLoader(
            data, batch_size=batch, shuffle=False, drop_last=True, collate_fn=collate, pin_memory=device.type == "cuda"
        )
        figures: dict[str, list[float]] = {key: [] for key in FIGURES}
        for _ in range(max(1, int(cfg.repeats))):
            train_s, train_mb = measure_lightning(cfg, loader, setting, device, output_dir)
            bare_s, bare_mb = measure_bare(cfg, loader, setting, device)
            infer_s, infer_mb = measure_inference(cfg, data.images[:batch], setting, device)
            for key, value in (
                ("train_img_s", batch / train_s),
                ("bare_img_s", batch / bare_s),
                ("overhead_pct", 100 * (train_s / bare_s - 1)),
                ("infer_img_s", batch / infer_s),
                ("train_peak_mb", train_mb),
                ("bare_peak_mb", bare_mb),
                ("infer_peak_mb", infer_mb),
            ):
                figures[key].append(value)
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        rows.append({**setting, "device": device_name, **figures})
    return rows
