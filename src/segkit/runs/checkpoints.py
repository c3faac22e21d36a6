"""Checkpoint files read as data, for `segkit.training.module.load_module` (the one way to rebuild a model from a
checkpoint: evaluate, predict, export) and for a training that resumes from one.

A checkpoint is data: tensors and plain configs, read with `weights_only=True`. Its configs are checked
(segkit.config.trust) before anything is built, and the network is rebuilt from them alone: the state dict holds every
weight, so the backbone's pretrained source (`backbone.pretrained`, `backbone.weights`) is never reached for.
"""

from __future__ import annotations

import copy
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torchmetrics import Metric

from segkit.errors import MissingFile, Refusal

HPARAMS = ("model", "loss", "optimizer", "scheduler", "data")
REQUIRED = ("model", "loss", "optimizer", "data")
# Where the pretrained weights came from during training; the checkpoint's state dict replaces them.
WEIGHT_SOURCES = {"pretrained": False, "weights": None}
TIMM_WEIGHT_SOURCES = ("checkpoint_path",)  # timm.create_model would load this file after building
# Unexpected state dict keys tolerated: metric and tracker states of other segkit versions (`val_confusion.*`,
# `val_miou_best.*`, `train_loss_mean.*`): the network is under `net.`, the loss's buffers under `criterion.`.
METRIC_STATE_KEY = re.compile(r"(train|val|test)_\w+\.")
FIX_CORRUPT = (
    "Fix: copy the file again (a copy or a save that was cut short leaves it truncated), or use another "
    "checkpoint of the run: <run dir>/checkpoints/last.ckpt or a best-*.ckpt."
)
FIX_NOT_SEGKIT = "Fix: pass a checkpoint written by train.py (<run dir>/checkpoints/last.ckpt or a best-*.ckpt)."


class CheckpointError(Refusal, ValueError):
    """A checkpoint file that cannot be read or is not a segkit checkpoint."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents (tensors and plain data only), with an error naming the file and the fix."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFile(
            f'Checkpoint "{path}" does not exist. Fix: pass ckpt_path=<run dir>/checkpoints/last.ckpt '
            "(or a best-*.ckpt) of a finished training run."
        )
    if not zipfile.is_zipfile(path):  # what torch.save has written since 1.6; anything else is cut short or foreign
        raise CheckpointError(
            f'Checkpoint "{path}" cannot be read: it is truncated or no checkpoint at all (no complete zip '
            f"archive in its {path.stat().st_size} bytes). {FIX_CORRUPT}"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused something: objects, not data
        # Only the refused object is named: torch's own advice (weights_only=False) would run the file's code.
        found = re.search(r"Unsupported (global|operand):? (GLOBAL )?[\w.]+", str(err))
        what = f" ({found.group(0)})" if found else ""
        raise CheckpointError(
            f'Checkpoint "{path}" holds more than tensors and plain data{what}; segkit checkpoints never do, '
            f"and segkit does not load such files. {FIX_NOT_SEGKIT}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = str(err).strip().split(". ")[0] if str(err).strip() else "unexpected end of file"
        raise CheckpointError(f'Checkpoint "{path}" cannot be read: {first}. {FIX_CORRUPT}') from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f'"{path}" is not a segkit checkpoint: it holds a {type(checkpoint).__name__}, not a checkpoint '
            f"dict. {FIX_NOT_SEGKIT}"
        )
    return checkpoint


def stored_hparams(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The checkpoint's hyperparameters: only segkit's own keys, each a config (or a null scheduler)."""
    hparams = checkpoint.get("hyper_parameters")
    missing = [key for key in ("state_dict", "hyper_parameters") if not isinstance(checkpoint.get(key), dict)]
    if not missing:
        missing = [f"hyper_parameters.{key}" for key in REQUIRED if not isinstance(hparams.get(key), dict)]
    if missing:
        raise CheckpointError(f'"{path}" is not a segkit checkpoint: it has no {", ".join(missing)}. {FIX_NOT_SEGKIT}')
    unknown = sorted(set(hparams) - set(HPARAMS), key=str)
    if unknown:
        key = unknown[0]
        raise CheckpointError(
            f'Refusing hyper_parameters.{key} = "{str(hparams[key])[:200]}" from checkpoint {path}: segkit '
            f"stores only {', '.join(HPARAMS)} there, so this file was not written by segkit's training or was "
            "altered (Lightning's own loader would call an _instantiator). Fix: do not use this file; take the "
            "checkpoint from the run that wrote it, or train again."
        )
    if hparams.get("scheduler") is not None and not isinstance(hparams["scheduler"], dict):
        raise CheckpointError(
            f'"{path}" is not a segkit checkpoint: hyper_parameters.scheduler is not a config. {FIX_NOT_SEGKIT}'
        )
    return hparams


def without_weight_sources(hparams: dict[str, Any]) -> dict[str, Any]:
    """A copy that builds the same network without reaching for pretrained weights (a download, a file): the
    checkpoint's state dict replaces them. The checkpoint's own record stays as it was trained."""
    rebuilt = copy.deepcopy(hparams)
    backbone = rebuilt["model"].get("backbone")
    if isinstance(backbone, dict):
        backbone.update(WEIGHT_SOURCES)
        for key in TIMM_WEIGHT_SOURCES:
            backbone.pop(key, None)
    return rebuilt


def _metric_prefixes(module: torch.nn.Module) -> tuple[str, ...]:
    return tuple(f"{name}." for name, child in module.named_modules() if name and isinstance(child, Metric))


def load_state(module: torch.nn.Module, state_dict: dict[str, Any], path: str | Path) -> None:
    """Strict, except for metric states: checkpoints of other segkit versions kept other trackers."""
    result = module.load_state_dict(state_dict, strict=False)
    metric_states = _metric_prefixes(module)
    missing = [k for k in result.missing_keys if not k.startswith(metric_states)]
    unexpected = [k for k in result.unexpected_keys if not METRIC_STATE_KEY.match(k)]
    if missing or unexpected:
        shown = [f"missing {k}" for k in missing[:5]] + [f"unexpected {k}" for k in unexpected[:5]]
        more = len(missing) + len(unexpected) - len(shown)
        raise CheckpointError(
            f'Checkpoint "{path}": its weights do not fit the network its config builds ({", ".join(shown)}'
            f"{f', and {more} more' if more > 0 else ''}). It was probably written by another version of the "
            "model code. Fix: evaluate it with the segkit version that trained it, or train again."
        )
