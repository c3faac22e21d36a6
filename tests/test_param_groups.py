"""Fine-tuning from config (`optimizer.param_groups`): the optimizer sees exactly the groups the config describes:
backbone learning-rate multiplier, no weight decay on norms, biases, position embeddings and tokens, layer-wise
decay for ViT-style backbones; without the entry, one group of every trainable parameter, as before."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segkit.training.module import build_module
from segkit.training.param_groups import ParamGroupsError, build_optimizer, check_param_groups
from segkit.training.schedules import poly

TINY_VIT = ["backbone.name=vit_tiny_patch16_224", "+backbone.depth=4"]
TINY_SWIN = [
    "backbone=swin_tiny",
    "+backbone.embed_dim=24",
    "+backbone.depths=[1,1,1,1]",
    "+backbone.num_heads=[1,1,1,1]",
]


def optimizer_of(module):
    return build_optimizer(module.hparams.optimizer, module, instantiate)


def group_of(optimizer) -> dict[int, dict]:
    """Each parameter's group; every parameter in exactly one."""
    found = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in found, "a parameter in two groups"
            found[id(p)] = group
    return found


def test_without_param_groups_every_trainable_parameter_is_in_one_group(tiny_train_cfg):
    module = build_module(tiny_train_cfg("model=upernet", *TINY_VIT))
    module.net.backbone.encoder.model.cls_token.requires_grad_(False)
    optimizer = optimizer_of(module)
    assert len(optimizer.param_groups) == 1
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in trainable]
    assert optimizer.param_groups[0]["lr"] == module.hparams.optimizer["lr"]


def test_the_optimizer_sees_exactly_the_groups_the_config_describes(tiny_train_cfg):
    cfg = tiny_train_cfg(
        "model=upernet",
        *TINY_VIT,
        "optimizer=adamw_finetune",
        "optimizer.lr=0.001",
        "optimizer.weight_decay=0.05",
        "optimizer.param_groups.backbone_lr_mult=0.2",
        "optimizer.param_groups.layer_decay=0.5",
    )
    module = build_module(cfg)
    optimizer = optimizer_of(module)
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = group_of(optimizer)
    trainable = {id(p): (name, p) for name, p in module.named_parameters() if p.requires_grad}
    assert set(groups) == set(trainable)
    encoder = "net.backbone.encoder.model."
    depth = 4
    for pid, (name, param) in trainable.items():
        group = groups[pid]
        no_decay = param.ndim <= 1 or name.endswith((".bias", "pos_embed", "cls_token"))
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
        if name.startswith(encoder):
            rest = name[len(encoder) :]
            layer = int(rest.split(".")[1]) + 1 if rest.startswith("blocks.") else 0  # patch embed, tokens: 0
            assert group["lr"] == pytest.approx(0.001 * 0.2 * 0.5 ** (depth + 1 - layer)), name
            assert group["name"] == f"backbone.layer_{layer:02d}" + (".no_decay" if no_decay else ""), name
        else:  # decoder and the ViT's pyramid neck: new layers, full rate
            assert group["lr"] == pytest.approx(0.001), name
            assert group["name"] == "head" + (".no_decay" if no_decay else ""), name
    names = [g["name"] for g in optimizer.param_groups]
    assert len(names) == len(set(names)) == 2 * (depth + 1) + 2


def test_a_backbone_rate_without_layer_decay_on_swin(tiny_train_cfg):
    cfg = tiny_train_cfg("model=segformer", *TINY_SWIN, "optimizer=adamw_finetune")
    module = build_module(cfg)
    optimizer = optimizer_of(module)
    lr, wd = cfg.optimizer.lr, cfg.optimizer.weight_decay
    expected = {
        "backbone": (lr * 0.1, wd),
        "backbone.no_decay": (lr * 0.1, 0.0),
        "head": (lr, wd),
        "head.no_decay": (lr, 0.0),
    }
    assert {g["name"] for g in optimizer.param_groups} == set(expected)
    for group in optimizer.param_groups:
        assert (group["lr"], group["weight_decay"]) == pytest.approx(expected[group["name"]])
    no_decay = {
        n
        for n, p in module.named_parameters()
        if id(p) in {id(q) for g in optimizer.param_groups if g["name"] == "backbone.no_decay" for q in g["params"]}
    }
    assert any(n.endswith("relative_position_bias_table") for n in no_decay)
    assert any(n.endswith("norm1.weight") for n in no_decay)


def test_schedules_keep_the_ratios_between_groups(tiny_train_cfg):
    module = build_module(
        tiny_train_cfg(*TINY_VIT, "optimizer=adamw_finetune", "optimizer.param_groups.layer_decay=0.8")
    )
    optimizer = optimizer_of(module)
    scheduler = poly(optimizer, total_steps=10, warmup_steps=3)
    first = [g["lr"] for g in optimizer.param_groups]
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    now = [g["lr"] for g in optimizer.param_groups]
    assert now[0] != first[0]  # the schedule moved every rate, by one factor
    assert [n / now[-1] for n in now] == pytest.approx([f / first[-1] for f in first])


def test_settings_a_network_cannot_take_fail_at_start_up(tiny_train_cfg):
    cfg = tiny_train_cfg("optimizer=adamw_finetune", "optimizer.param_groups.layer_decay=0.65")  # a resnet18
    module = build_module(tiny_train_cfg())
    with pytest.raises(ParamGroupsError, match="layer_decay is for ViT-style backbones.*Fix"):
        check_param_groups(OmegaConf.to_container(cfg.optimizer), module.net)
    typo = {**OmegaConf.to_container(cfg.optimizer), "param_groups": {"backbone_lr_mul": 0.1}}
    with pytest.raises(ParamGroupsError, match=r"unknown keys \['backbone_lr_mul'\]"):
        check_param_groups(typo, module.net)
    bad = {**OmegaConf.to_container(cfg.optimizer), "param_groups": {"layer_decay": 1.5}}
    with pytest.raises(ParamGroupsError, match="layer_decay=1.5"):
        check_param_groups(bad, module.net)


def test_the_module_gives_its_optimizer_these_groups(tiny_train_cfg):
    """SegmentationModule.configure_optimizers builds the optimizer through segkit.training.param_groups."""
    cfg = tiny_train_cfg(
        *TINY_VIT, "optimizer=adamw_finetune", "optimizer.param_groups.layer_decay=0.5", "scheduler=none"
    )
    module = build_module(cfg)
    optimizer = module.configure_optimizers()
    expected = optimizer_of(module)
    assert [(g["name"], g["lr"], g["weight_decay"], [id(p) for p in g["params"]]) for g in optimizer.param_groups] == [
        (g["name"], g["lr"], g["weight_decay"], [id(p) for p in g["params"]]) for g in expected.param_groups
    ]
