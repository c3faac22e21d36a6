"""Every shipped config: each option of each group of each entry config composes, passes the start-up checks
unchanged, names only trusted `_target_`s, and (training's) resolves with the class facts from the data config."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF, compose_config
from segkit.config.checks import validate
from segkit.config.trust import check_targets

GROUPS = [
    "data",
    "augment",
    "model",
    "backbone",
    "loss",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "experiment",
    "debug",
    "inference",
]
# Each entry config with the values it cannot do without.
ENTRY = {
    "train": [],
    "evaluate": ["ckpt_path=x.ckpt"],
    "predict": ["ckpt_path=x.ckpt", "input=in"],
    "export": ["ckpt_path=x.ckpt"],
    "check_data": [],
    "browse_data": [],
    "bench": [],
}
VALIDATED = ("train", "evaluate", "predict", "export", "check_data")  # the tasks segkit.config.checks knows


# The groups whose options each entry config is composed with. train: every group it has; the other tasks: the
# groups whose values they judge differently (inference, data); the rest compose the same files as train.
PER_OPTION = {"train": GROUPS, "evaluate": ["inference", "data"], "predict": ["inference"], "check_data": ["data"]}


def shipped_configs() -> list[tuple[str, str]]:
    """(entry config, override): each entry config bare, then with every option of the groups PER_OPTION lists
    (evaluate with every data config too: by default it has none, the checkpoint's)."""
    cases = [(name, "") for name in ENTRY]
    for name, groups in PER_OPTION.items():
        text = (CONF / f"{name}.yaml").read_text()
        for group in groups:
            if f"- {group}:" in text or f"- override /{group}:" in text:
                cases += [(name, f"{group}={p.stem}") for p in sorted((CONF / group).glob("*.yaml"))]
    return cases


SHIPPED = shipped_configs()


@pytest.mark.parametrize("config,override", SHIPPED, ids=[f"{c}:{o}" for c, o in SHIPPED])
def test_every_shipped_config_composes_passes_its_checks_and_names_trusted_targets(tmp_path: Path, config, override):
    cfg = compose_config(config, ENTRY[config] + ([override] if override else []), tmp_path)
    if config in VALIDATED:
        before = OmegaConf.to_yaml(cfg)
        validate(cfg, config)
        assert OmegaConf.to_yaml(cfg) == before  # nothing to convert either
    assert list(cfg.get("trusted_modules") or []) == []  # no shipped config trusts more than segkit's own list
    check_targets(cfg, source=f"{config} {override}", trusted=())
    if config == "train":
        OmegaConf.resolve(cfg)  # every interpolation has a target
        assert cfg.model.num_classes == cfg.data.num_classes
        assert cfg.model.in_channels == cfg.data.in_channels


def test_every_option_of_every_group_is_a_shipped_case():
    listed = {(o.split("=", 1)[0], o.split("=", 1)[1]) for _, o in SHIPPED if o}
    for group in GROUPS:
        assert {(group, p.stem) for p in (CONF / group).glob("*.yaml")} <= listed, group


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

    from segkit.runs.run_names import wandb_group, wandb_tags

    assert wandb_group("train", RunMode.RUN, "logs/train/multiruns/S") == "train"
    assert wandb_group("train", RunMode.MULTIRUN, "logs/train/multiruns/S") == "train-sweep-S"
    long = "+data.root=/" + "x" * 100
    assert list(wandb_tags(["dev"], RunMode.MULTIRUN, ["model=fcn", long, "dev"])) == ["dev", "model=fcn", long[1:65]]
    assert list(wandb_tags(["dev"], RunMode.RUN, ["model=fcn"])) == ["dev"]
