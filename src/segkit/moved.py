"""Old `_target_` addresses, mapped to where their classes live now: the one table of moved names.

Configs and checkpoints store `_target_` strings (a module path and a name). A checkpoint's hyperparameters, and the
command-line overrides a run directory records, keep the addresses of the segkit that wrote them; when segkit moves a
class, they are read through this table, so that old checkpoints still evaluate, predict and export, and old runs
still resume (`ckpt_path=last`). No module stays behind at an old address, and the allow-list (segkit.config.trust)
names only the new ones: an old name reaches it only through this table, as timm maps deprecated model names.

A leaf: imports nothing of segkit, so that every layer that reads stored configs may use it.
"""

from __future__ import annotations

import re
from typing import Any

# Old `_target_` -> new, for every name the allow-list accepted at its old address. When a class moves, add a line;
# never remove one (old files keep their addresses for ever).
MOVED_TARGETS: dict[str, str] = {
    # 0.1.0, issue 21: the package's folders name its ideas (runs/, config/, training/, reports/, callbacks/).
    "segkit.losses.CrossEntropyLoss": "segkit.training.losses.CrossEntropyLoss",
    "segkit.losses.DiceLoss": "segkit.training.losses.DiceLoss",
    "segkit.losses.FocalLoss": "segkit.training.losses.FocalLoss",
    "segkit.losses.WeightedSum": "segkit.training.losses.WeightedSum",
    "segkit.schedules.poly": "segkit.training.schedules.poly",
    "segkit.schedules.cosine": "segkit.training.schedules.cosine",
    "segkit.loggers.CSVLogger": "segkit.runs.loggers.CSVLogger",
    "segkit.loggers.WandbLogger": "segkit.runs.loggers.WandbLogger",
    "segkit.loggers.AppendingWriter": "segkit.runs.loggers.AppendingWriter",
    "segkit.checkpoint_io.AtomicCheckpointIO": "segkit.runs.checkpoint_io.AtomicCheckpointIO",
    "segkit.callbacks.PredictionTable": "segkit.reports.predictions.PredictionTable",
    "segkit.callbacks.MaskWriter": "segkit.reports.predictions.MaskWriter",
    # Before segkit.schedules: the schedules' first address, still in the scheduler config of older checkpoints.
    "segkit.optim.poly": "segkit.training.schedules.poly",
    "segkit.optim.cosine": "segkit.training.schedules.cosine",
    # 0.2.0, issue 22: Lovász for every task (Lovász-Softmax, or the Lovász hinge of sigmoid outputs).
    "segkit.training.losses.LovaszSoftmaxLoss": "segkit.training.losses.LovaszLoss",
}

# An old address inside an override's value (`loss._target_=segkit.losses.DiceLoss`, or in a dict of one), whole.
_OLD_NAME = re.compile(r"(?<![\w.])(" + "|".join(re.escape(old) for old in MOVED_TARGETS) + r")(?![\w.])")


def moved_target(target: Any) -> Any:
    """The current address of a `_target_` value: the table's new name for an old one, anything else as it is."""
    return MOVED_TARGETS.get(target, target) if isinstance(target, str) else target


def with_moved_targets(config: Any) -> Any:
    """A copy of a stored config (plain dicts and lists, as a checkpoint holds them) with every `_target_`, at any
    depth, at its current address.

    Example:
        >>> with_moved_targets({"loss": {"_target_": "segkit.losses.DiceLoss", "smooth": 1.0}})
        {'loss': {'_target_': 'segkit.training.losses.DiceLoss', 'smooth': 1.0}}
    """
    if isinstance(config, dict):
        return {key: moved_target(v) if key == "_target_" else with_moved_targets(v) for key, v in config.items()}
    if isinstance(config, (list, tuple)):
        return type(config)(with_moved_targets(value) for value in config)
    return config


def moved_override(override: str) -> str:
    """A recorded command-line override (`key=value`) that sets a `_target_` (`loss._target_=...`, or one inside a
    dict value), with every old address in its value at the current one; any other override as it is.

    Example:
        >>> moved_override("scheduler._target_=segkit.optim.poly")
        'scheduler._target_=segkit.training.schedules.poly'
    """
    key, sep, value = str(override).partition("=")
    if not sep or "_target_" not in override:
        return override
    return f"{key}{sep}{_OLD_NAME.sub(lambda found: MOVED_TARGETS[found.group(1)], value)}"
