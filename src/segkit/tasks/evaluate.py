"""Score a checkpoint, or an ensemble of several (`ckpt_path=[a,b,c]`, a run or sweep directory), on a split. The
checkpoint alone is enough: it carries its data config (an ensemble's first member's)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segkit.config.trust import safe_instantiate
from segkit.reports.evaluation import build_report, print_report, write_report_files
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
    trainer = build_trainer(cfg, callbacks)
    try:
        run = trainer.validate if split == "val" else trainer.test
        run(module, datamodule=datamodule, verbose=False)
        metrics = split_metrics(trainer.callback_metrics, split)
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
