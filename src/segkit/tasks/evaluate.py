"""Score a checkpoint on a split. The checkpoint alone is enough: it carries its data config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segkit.config.trust import safe_instantiate
from segkit.reports.evaluation import build_report, print_report, write_report_files
from segkit.reports.predictions import MaskWriter, PredictionTable
from segkit.runs.atomic import write_json
from segkit.runs.console import quiet_known_noise
from segkit.tasks.common import build_trainer, finish_wandb, log_to_files, plain, split_metrics
from segkit.training.inference import build_inference
from segkit.training.module import SegmentationModule, load_module

SPLITS = ("val", "test")


def checkpoint_data(cfg: DictConfig, module: SegmentationModule) -> DictConfig:
    """The data config: `data=...` if given, else the checkpoint's; `data_overrides` on top."""
    data_cfg = cfg.data if cfg.get("data") else OmegaConf.create(module.hparams.data)
    return OmegaConf.merge(data_cfg, cfg.get("data_overrides") or {})


def evaluate(cfg: DictConfig) -> dict[str, float]:
    split = cfg.split
    if split not in SPLITS:
        raise ValueError(f"split='{split}' is not one of {SPLITS}.")
    quiet_known_noise()
    trusted = cfg.get("trusted_modules") or ()
    module = load_module(cfg.ckpt_path, trusted=trusted)
    data_cfg = checkpoint_data(cfg, module)
    module.inference = build_inference(plain(cfg.inference), plain(data_cfg))
    source = "the data config of this command" if cfg.get("data") else f"checkpoint {cfg.ckpt_path}"
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
    trainer = build_trainer(cfg, callbacks)
    try:
        run = trainer.validate if split == "val" else trainer.test
        run(module, datamodule=datamodule, verbose=False)
        metrics = split_metrics(trainer.callback_metrics, split)
    finally:
        finish_wandb()
    report = build_report(module.last_confusion[split], datamodule.class_names, module.task.name)
    if trainer.is_global_zero:
        text = print_report(report, f"{split} of {cfg.ckpt_path} ({module.inference})")
        write_report_files(report, output_dir)
        log_to_files(f"{text}Report: {output_dir}")  # evaluate.log holds what the console showed
        write_json(
            output_dir / "metrics.json",
            {
                "checkpoint": str(cfg.ckpt_path),
                "split": split,
                "inference": plain(cfg.inference),
                "metrics": metrics,
                **report,
            },
        )
        print(f"Report: {output_dir}")
    return metrics
