"""Score a checkpoint, or an ensemble of several (`ckpt_path=[a,b,c]`, a run or sweep directory), on a split. The
checkpoint alone is enough: it carries its data config (an ensemble's first member's)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from segkit.config.trust import safe_instantiate
from segkit.data.dataset import Sample
from segkit.data.filedata import FileDataModule
from segkit.data.files import read_size
from segkit.data.mask_rows import MaskRows
from segkit.errors import Refusal
from segkit.reports.evaluation import build_report, print_report, write_report_files
from segkit.reports.large_images import LargeImages, windowed_inference
from segkit.reports.predictions import MaskWriter, PredictionTable
from segkit.runs.atomic import write_json
from segkit.runs.console import quiet_known_noise
from segkit.runs.model_files import model_files
from segkit.tasks.common import build_trainer, checkpoint_argument, finish_wandb, log_to_files, plain, split_metrics
from segkit.training.ensemble import load_models, member_names
from segkit.training.module import SegmentationModule

SPLITS = ("val", "test")
log = logging.getLogger(__name__)


def checkpoint_data(cfg: DictConfig, module: SegmentationModule) -> DictConfig:
    """The data config: `data=...` if given, else the checkpoint's; `data_overrides` on top."""
    data_cfg = cfg.data if cfg.get("data") else OmegaConf.create(module.hparams.data)
    return OmegaConf.merge(data_cfg, cfg.get("data_overrides") or {})


def set_aside_large_images(datamodule: Any, module: SegmentationModule, split: str) -> list[Sample]:
    """The split's images larger than `inference.window_above` squared, by their headers, taken out of its dataset
    (datasets on disk; the start-up check reads their headers only)."""
    if not isinstance(datamodule, FileDataModule):
        return []
    datamodule.set_aside_large = module.inference.is_large
    datamodule.setup("validate" if split == "val" else "test")
    return datamodule.large.get(split, [])


def score_large_images(
    samples: list[Sample],
    module: SegmentationModule,
    datamodule: FileDataModule,
    trainer: Any,
    split: str,
    masks_dir: Path | None,
) -> None:
    """Adds each large image's counts to the module's `{split}_confusion`, band of rows by band of rows: the image
    read and predicted window by window, its mask read in the same bands (segkit.data.mask_rows), so that neither
    is ever whole in memory. With `masks_dir`, the predictions are written there as tiled TIFFs."""
    if trainer.world_size > 1:
        raise Refusal(
            f"evaluate.py scores large images (above inference.window_above={module.inference.window_above} "
            f"squared pixels) in one process, but this trainer runs {trainer.world_size}. Fix: trainer.devices=1."
        )
    windows = windowed_inference(module.inference, module.hparams.data, len(samples))
    device = trainer.strategy.root_device
    module.to(device).eval()
    confusion = getattr(module, f"{split}_confusion")
    large = LargeImages(masks_dir, datamodule.palette, module.task)
    for sample in samples:
        with MaskRows(sample, datamodule.datasets[split], read_size(sample.image)) as mask:

            def count(y0: int, preds: torch.Tensor, mask: MaskRows = mask) -> None:
                target = torch.from_numpy(mask.rows(y0, y0 + preds.shape[-2])).to(device)
                confusion.update(preds[None], target[None])

            large.predict(
                sample.image,
                sample.name,
                module,
                windows,
                datamodule.in_channels,
                datamodule.image_max_value,
                device,
                trainer.precision_plugin.forward_context,
                on_band=count,
            )
            mask.finish()
    print(f"{len(samples)} large image(s) of the {split} split scored window by window ({windows})")


def log_scores(module: SegmentationModule, trainer: Any, split: str) -> dict[str, float]:
    """The split's scores from the module's counts, to the run's loggers as a loop would log them."""
    _, metrics = module.epoch_scores(split)
    for logger in trainer.loggers:
        logger.log_metrics(metrics)
        logger.finalize("success")
    return metrics


def evaluate(cfg: DictConfig) -> dict[str, float]:
    split = cfg.split
    if split not in SPLITS:
        raise ValueError(f"split='{split}' is not one of {SPLITS}.")
    quiet_known_noise()
    trusted = cfg.get("trusted_modules") or ()
    ckpt_path = checkpoint_argument(cfg.ckpt_path)
    paths = model_files(ckpt_path)
    module = load_models(
        paths, plain(cfg.inference), trusted=trusted, data_of=lambda member: plain(checkpoint_data(cfg, member))
    )
    data_cfg = checkpoint_data(cfg, module)
    members = member_names(module)
    if members and split == "val" and data_cfg.get("num_folds"):
        log.warning(
            "The val split of this k-fold data config is one fold (data.fold=%s); the other members of the ensemble "
            "trained on it, so its score flatters them. Score an ensemble of folds on split=test.",
            data_cfg.get("fold"),
        )
    source = "the data config of this command" if cfg.get("data") else f"checkpoint {paths[0]}"
    datamodule = safe_instantiate(data_cfg, source=source, trusted=trusted, key="data")
    output_dir = Path(cfg.paths.output_dir)
    callbacks = []
    if cfg.get("save_predictions"):
        palette, ignore_index = datamodule.palette, datamodule.ignore_index
        callbacks.append(
            MaskWriter(
                output_dir / "predictions",
                palette,
                ignore_index=ignore_index,
                task=module.task.name,
                class_names=datamodule.class_names,
                label_format=cfg.get("label_format", "png"),
            )
        )
    if cfg.get("log_table"):
        callbacks.append(PredictionTable(datamodule.class_names, datamodule.ignore_index, max_rows=cfg.log_table))
    large = set_aside_large_images(datamodule, module, split)
    trainer = build_trainer(cfg, callbacks)
    try:
        if large:
            masks_dir = output_dir / "predictions" if cfg.get("save_predictions") else None
            score_large_images(large, module, datamodule, trainer, split, masks_dir)
        if datamodule.datasets.get(split) is None or len(datamodule.datasets[split]):
            run = trainer.validate if split == "val" else trainer.test
            run(module, datamodule=datamodule, verbose=False)  # adds the other images to the large ones' counts
            metrics = split_metrics(trainer.callback_metrics, split)
        else:  # every image was large: no loop to run, the counts are complete
            metrics = log_scores(module, trainer, split)
    finally:
        finish_wandb()
    report = build_report(module.last_confusion[split], datamodule.class_names, module.task.name)
    if trainer.is_global_zero:
        # An ensemble's description lists its members.
        scored = f"{ckpt_path} ({module.inference})" if members is None else str(module.inference)
        text = print_report(report, f"{split} of {scored}")
        write_report_files(report, output_dir)
        log_to_files(f"{text}Report: {output_dir}")  # evaluate.log holds what the console showed
        write_json(
            output_dir / "metrics.json",
            {
                "checkpoint": str(paths[0]) if members is None else ckpt_path,
                "members": members,
                "split": split,
                "inference": plain(cfg.inference),
                "metrics": metrics,
                **report,
            },
        )
        print(f"Report: {output_dir}")
    return metrics
