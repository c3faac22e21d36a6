"""Parameter groups for fine-tuning, described in the optimizer config (`optimizer.param_groups`).

The optimizer config stays a `_partial_` torch.optim class; its `param_groups` entry (plain data, taken out
before the class is called) says how the parameters are grouped:

    param_groups:
      backbone_lr_mult: 0.1   # the backbone's (pretrained encoder's) learning rate is lr x this
      no_weight_decay: true   # norms, biases, position embeddings and tokens get weight_decay 0
      layer_decay: 0.65       # ViT-style backbones: block i of L gets lr x 0.65^(L + 1 - i) (BEiT / MMSegmentation)

Without `param_groups` the optimizer gets every trainable parameter in one group, as before. With it, every
trainable parameter lands in exactly one named group (`head`, `backbone`, `backbone.layer_03`, each with
`.no_decay` for the parameters without weight decay); Lightning's learning-rate monitor logs each by name.
The decoder and the ViT pyramid neck (new layers, not pretrained) are the head: lr x 1, never layer-decayed.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from segkit.errors import Refusal

KEY = "param_groups"
SETTINGS = {"backbone_lr_mult": 1.0, "no_weight_decay": False, "layer_decay": None}
# Parameters without weight decay besides 1-D ones (norm weights, biases, layer scales), by the last part of
# their name: position embeddings, relative position tables and tokens.
NO_DECAY_NAMES = (
    "pos_embed",
    "pos_embd",
    "absolute_pos_embed",
    "relative_position_bias_table",
    "rel_pos_h",
    "rel_pos_w",
    "cls_token",
    "reg_token",
    "dist_token",
    "mask_token",
)


class ParamGroupsError(Refusal, ValueError):
    """`optimizer.param_groups` that cannot be applied to this network."""


def split_optimizer_config(optimizer: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The optimizer config without `param_groups` (what Hydra instantiates), and the settings (None: absent),
    checked and completed with their defaults."""
    config = dict(optimizer)
    settings = config.pop(KEY, None)
    if settings is None:
        return config, None
    settings = dict(settings)
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ParamGroupsError(
            f"optimizer.{KEY} has unknown keys {unknown}. Fix: use only {sorted(SETTINGS)} "
            "(see conf/optimizer/adamw_finetune.yaml)."
        )
    settings = {**SETTINGS, **settings}
    mult, decay = settings["backbone_lr_mult"], settings["layer_decay"]
    if not isinstance(mult, (int, float)) or isinstance(mult, bool) or mult < 0:
        raise ParamGroupsError(
            f"optimizer.{KEY}.backbone_lr_mult={mult!r}: a number >= 0 (0 freezes the backbone's "
            "updates). Fix: e.g. 0.1."
        )
    if decay is not None and (not isinstance(decay, (int, float)) or isinstance(decay, bool) or not 0 < decay <= 1):
        raise ParamGroupsError(
            f"optimizer.{KEY}.layer_decay={decay!r}: a number in (0, 1], or null for none. "
            "Fix: e.g. 0.65 (MAE) or 0.9 (BEiT)."
        )
    return config, settings


def parameter_groups(
    module: nn.Module, settings: Mapping[str, Any], lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """The named groups of `module`'s trainable parameters that `settings` describe (see the module docs)."""
    settings = {**SETTINGS, **settings}
    backbone = _find_backbone(module)
    encoder_names = {id(p): n for n, p in backbone.encoder.named_parameters()} if backbone is not None else {}
    if settings["backbone_lr_mult"] != 1.0 and backbone is None:
        raise ParamGroupsError(f"optimizer.{KEY}.backbone_lr_mult is set, but the network has no segkit Backbone.")
    layers, head_layer = ({}, 0)
    if settings["layer_decay"] is not None:
        layers, head_layer = _layer_ids(backbone)
    no_decay_extra = _model_no_weight_decay(backbone)
    groups: dict[str, dict[str, Any]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        in_backbone = id(param) in encoder_names
        scale, group = 1.0, "backbone" if in_backbone else "head"
        if in_backbone:
            scale = float(settings["backbone_lr_mult"])
            if layers:
                layer = layers.get(id(param), head_layer - 1)
                scale *= float(settings["layer_decay"]) ** (head_layer - layer)
                group += f".layer_{layer:02d}"
        decays = not (
            settings["no_weight_decay"]
            and _no_decay(encoder_names.get(id(param), name), param, no_decay_extra if in_backbone else set())
        )
        if not decays:
            group += ".no_decay"
        entry = groups.setdefault(
            group, {"params": [], "lr": lr * scale, "weight_decay": weight_decay if decays else 0.0, "name": group}
        )
        entry["params"].append(param)
    return list(groups.values())


def build_optimizer(optimizer: Mapping[str, Any], module: nn.Module, instantiate) -> torch.optim.Optimizer:
    """The optimizer of config `optimizer` over `module`'s trainable parameters, grouped as its `param_groups`
    say. `instantiate(config)` builds the config's `_partial_` (the caller's checked instantiation)."""
    config, settings = split_optimizer_config(optimizer)
    factory = instantiate(config)
    if settings is None:
        return factory(params=[p for p in module.parameters() if p.requires_grad])
    lr = _argument(factory, "lr")
    weight_decay = _argument(factory, "weight_decay") or 0.0
    return factory(params=parameter_groups(module, settings, lr=float(lr), weight_decay=float(weight_decay)))


def check_param_groups(optimizer: Mapping[str, Any], module: nn.Module) -> None:
    """Fail at start-up (before data is read) on settings this network cannot take."""
    _, settings = split_optimizer_config(optimizer)
    if settings is not None:
        parameter_groups(module, settings, lr=1.0, weight_decay=0.0)


def _argument(factory: Any, name: str) -> Any:
    """A keyword of a `functools.partial` of an optimizer class, else the class's default."""
    keywords = getattr(factory, "keywords", {}) or {}
    if name in keywords:
        return keywords[name]
    func = getattr(factory, "func", factory)
    parameter = inspect.signature(func).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def _find_backbone(module: nn.Module) -> nn.Module | None:
    from segkit.models.backbone import Backbone

    return next((m for m in module.modules() if isinstance(m, Backbone)), None)


def _layer_ids(backbone: nn.Module | None) -> tuple[dict[int, int], int]:
    """Layer id of each encoder parameter (0: patch embedding and tokens, i + 1: block i) and the head's id
    (one past the last block: lr scale 1), from timm's own grouping of a ViT-style model's parameters."""
    from timm.models import group_parameters

    model = getattr(getattr(backbone, "encoder", None), "model", None)
    if model is None or not hasattr(model, "group_matcher"):
        name = getattr(backbone, "name", "this backbone")
        raise ParamGroupsError(
            f'optimizer.{KEY}.layer_decay is for ViT-style backbones (timm\'s blocks, in order); "{name}" is not one. '
            f"Fix: optimizer.{KEY}.layer_decay=null, and optimizer.{KEY}.backbone_lr_mult for a lower backbone rate."
        )
    by_name = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    ids = {id(p): int(by_name[n]) for n, p in model.named_parameters() if n in by_name}
    return ids, max(ids.values(), default=0) + 1


def _model_no_weight_decay(backbone: nn.Module | None) -> set[str]:
    model = getattr(getattr(backbone, "encoder", None), "model", None)
    names = model.no_weight_decay() if model is not None and hasattr(model, "no_weight_decay") else set()
    return {f"model.{n}" for n in names}


def _no_decay(name: str, param: torch.Tensor, extra: set[str]) -> bool:
    last = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or last == "bias" or last in NO_DECAY_NAMES or name in extra
