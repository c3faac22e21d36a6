"""A frozen backbone, and unfreezing it after N epochs (`backbone.freeze`, `backbone.unfreeze_at_epoch`,
`backbone.unfreeze_warmup_steps`; `backbone.freeze_bn` is the network's own: segkit.models.Backbone).

The backbone here is the timm encoder (`net.backbone.encoder`): the pretrained part. A ViT's pyramid neck and the
decoder are new layers and always train.

How it is done (and why not Lightning's `BackboneFinetuning`, which adds a parameter group to the optimizer when it
unfreezes: segkit's per-step schedules fix their groups' base rates when they are built, and a resumed run must find
the optimizer and schedule it saved):
- `freeze` alone: the encoder's parameters have `requires_grad=False` and stay out of the optimizer.
- With `unfreeze_at_epoch`: every parameter is in the optimizer from the start, the encoder in its own groups
  (`backbone...`, built even without `optimizer.param_groups`); at each epoch's start the encoder's `requires_grad`
  is set from the epoch number alone (so a resumed run recomputes it), and no gradient, moment or weight decay
  touches it while frozen (the optimizers skip parameters without a gradient). The schedule holds the backbone
  groups at rate 0 and, from the first step of `unfreeze_at_epoch`, ramps them linearly to their own rate
  (lr x `optimizer.param_groups.backbone_lr_mult`, then the schedule) over `unfreeze_warmup_steps`: that start step
  is plain data in the schedule's state (segkit.training.schedules.WarmupDecayLR.hold_groups).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from segkit.errors import Refusal

# The backbone config's keys that shape the training, not the network: taken out before the network is built.
TRAINING_KEYS = ("freeze", "unfreeze_at_epoch", "unfreeze_warmup_steps")


class FreezingError(Refusal, ValueError):
    """Backbone freezing settings that contradict each other or are out of range."""


@dataclass(frozen=True)
class BackboneFreezing:
    """When the backbone (the timm encoder) trains: always, never (`freeze`), or from epoch `unfreeze_at_epoch` on,
    its rate ramping up over `unfreeze_warmup_steps` optimizer steps. Built by SegmentationModule from the backbone
    config's `TRAINING_KEYS`; the config checks (segkit.config.checks) name bad values at start-up.

    Args:
        freeze: the backbone does not train (from the start).
        unfreeze_at_epoch: the epoch (0-based, >= 1) from which a frozen backbone trains; None: never.
        unfreeze_warmup_steps: optimizer steps over which the backbone's rate ramps linearly from 0 to its own after
            unfreezing (0: its full rate at once).

    Example:
        >>> from segkit.training.freezing import BackboneFreezing
        >>> backbone = {"name": "resnet18", "freeze": True, "unfreeze_at_epoch": 2, "freeze_bn": True}
        >>> freezing = BackboneFreezing.pop_from(backbone)
        >>> backbone  # what the network is built from
        {'name': 'resnet18', 'freeze_bn': True}
        >>> [freezing.trains_at(epoch) for epoch in range(4)]
        [False, False, True, True]
    """

    freeze: bool = False
    unfreeze_at_epoch: int | None = None
    unfreeze_warmup_steps: int = 0

    def __post_init__(self) -> None:
        epoch, warmup = self.unfreeze_at_epoch, self.unfreeze_warmup_steps
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1):
            raise FreezingError(f"backbone.unfreeze_at_epoch={epoch!r}: null or a whole number >= 1.")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise FreezingError(f"backbone.unfreeze_warmup_steps={warmup!r}: a whole number >= 0.")
        if epoch is not None and not self.freeze:
            raise FreezingError(
                f"backbone.unfreeze_at_epoch={epoch} with backbone.freeze=false: nothing to unfreeze. "
                "Fix: backbone.freeze=true, or backbone.unfreeze_at_epoch=null."
            )
        if warmup and epoch is None:
            raise FreezingError(
                f"backbone.unfreeze_warmup_steps={warmup} without backbone.unfreeze_at_epoch: there is no unfreezing "
                "to warm up. Fix: set backbone.unfreeze_at_epoch, or backbone.unfreeze_warmup_steps=0."
            )

    @classmethod
    def pop_from(cls, backbone: MutableMapping[str, Any]) -> BackboneFreezing:
        """The settings of a backbone config, taken out of it (what remains builds the network)."""
        found = {key: backbone.pop(key) for key in TRAINING_KEYS if key in backbone}
        return cls(
            freeze=bool(found.get("freeze") or False),
            unfreeze_at_epoch=found.get("unfreeze_at_epoch"),
            unfreeze_warmup_steps=found.get("unfreeze_warmup_steps") or 0,
        )

    @property
    def unfreezes(self) -> bool:
        """Whether a frozen backbone starts training during the run (its parameters then need optimizer groups)."""
        return self.freeze and self.unfreeze_at_epoch is not None

    def trains_at(self, epoch: int) -> bool:
        """Whether the backbone trains in epoch `epoch` (0-based)."""
        return not self.freeze or (self.unfreeze_at_epoch is not None and epoch >= self.unfreeze_at_epoch)

    def apply(self, encoder: nn.Module, epoch: int) -> bool:
        """Sets `requires_grad` of the encoder's parameters for epoch `epoch`; returns whether it trains."""
        trains = self.trains_at(epoch)
        if self.freeze:  # an unfrozen-only run leaves requires_grad as the network has it
            encoder.requires_grad_(trains)
        return trains


@contextlib.contextmanager
def all_trainable(module: nn.Module) -> Iterator[None]:
    """Every parameter of `module` requires grad inside the block (so that an optimizer built there takes it), as
    before afterwards."""
    before = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(True)
    try:
        yield
    finally:
        for param, flag in before:
            param.requires_grad_(flag)


def backbone_group_indices(optimizer: Any, encoder: nn.Module) -> list[int]:
    """The optimizer's groups that hold only encoder parameters (the `backbone...` groups)."""
    ids = {id(p) for p in encoder.parameters()}
    return [i for i, g in enumerate(optimizer.param_groups) if g["params"] and all(id(p) in ids for p in g["params"])]
