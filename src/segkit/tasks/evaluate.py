"""Score a checkpoint on a split. The checkpoint alone is enough: it carries its data config."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segkit.module import SegmentationModule
from segkit.tasks.common import build_trainer, finish_wandb, print_table, split_metrics, write_json

SPLITS = ("val", "test")


def load_module(ckpt_path: str | Path) -> SegmentationModule:
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint '{path}' does not exist. Fix: pass ckpt_path=<run dir>/checkpoints/last.ckpt "
            "(or a best-*.ckpt) of a finished training run."
        )
    return SegmentationModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    split = cfg.split
    if split not in SPLITS:
        raise ValueError(f"split='{split}' is not one of {SPLITS}.")
    module = load_module(cfg.ckpt_path)
    data_cfg = cfg.data if cfg.get("data") else OmegaConf.create(module.hparams.data)
    overrides = cfg.get("data_overrides") or {}
    datamodule = instantiate(OmegaConf.merge(data_cfg, overrides))
    trainer = build_trainer(cfg)
    try:
        run = trainer.validate if split == "val" else trainer.test
        run(module, datamodule=datamodule, verbose=False)
        metrics = split_metrics(trainer.callback_metrics, split)
    finally:
        finish_wandb()
    print_table(f"{split} metrics of {cfg.ckpt_path}", metrics)
    write_json(Path(cfg.paths.output_dir) / "metrics.json", {"checkpoint": str(cfg.ckpt_path), "split": split,
                                                              "metrics": metrics})
    return metrics
