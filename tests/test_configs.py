"""Every option of every config group composes and resolves, and class facts come from the data config."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import segkit  # noqa: F401  (registers the config resolvers)
from conftest import CONF, compose_config

GROUPS = ["data", "augment", "model", "backbone", "loss", "optimizer", "scheduler", "trainer", "logger", "callbacks",
          "experiment", "debug"]
CHOICES = [(group, p.stem) for group in GROUPS for p in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize("group,choice", CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
def test_every_config_option_composes_and_resolves(tmp_path: Path, group, choice):
    cfg = compose_config("train", [f"{group}={choice}"], tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation has a target
    assert cfg.model.num_classes == cfg.data.num_classes
    assert cfg.model.in_channels == cfg.data.in_channels


def test_class_facts_flow_from_the_data_config(tmp_path):
    cfg = compose_config("train", ["data.num_classes=2", "data.ignore_index=7", "loss=ce_dice"], tmp_path)
    assert cfg.model.num_classes == 2
    assert cfg.loss.losses.ce.ignore_index == 7 and cfg.loss.losses.dice.ignore_index == 7


def test_evaluate_config_needs_a_checkpoint(tmp_path):
    cfg = compose_config("evaluate", [], tmp_path)
    assert OmegaConf.is_missing(cfg, "ckpt_path") and cfg.split == "val" and cfg.get("data") is None


def test_wandb_run_names_say_what_was_overridden(tmp_path):
    default = compose_config("train", [], tmp_path)
    assert default.logger.wandb.name == "train"
    changed = compose_config("train", ["model=fcn", "backbone=resnet50"], tmp_path)
    assert changed.logger.wandb.name == "train:backbone=resnet50,model=fcn"


def test_sweep_jobs_share_a_wandb_group_and_are_tagged_with_their_overrides():
    from hydra.types import RunMode

    from segkit.run_names import wandb_group, wandb_tags

    assert wandb_group("train", RunMode.RUN, "logs/train/multiruns/S") == "train"
    assert wandb_group("train", RunMode.MULTIRUN, "logs/train/multiruns/S") == "train-sweep-S"
    long = "+data.root=/" + "x" * 100
    assert list(wandb_tags(["dev"], RunMode.MULTIRUN, ["model=fcn", long, "dev"])) == ["dev", "model=fcn", long[1:65]]
    assert list(wandb_tags(["dev"], RunMode.RUN, ["model=fcn"])) == ["dev"]
