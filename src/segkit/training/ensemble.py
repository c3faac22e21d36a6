"""Ensembles of checkpoints (`evaluate.py` / `predict.py` with `ckpt_path=[a,b,c]` or a sweep directory): each
member turns the images into probabilities with its own inference (whole, slide, test-time augmentation: the
command's `inference` config, a slide window defaulting to each member's own training crop), and the ensemble
averages them: softmax probabilities for multiclass, each label's sigmoid for binary and multi-label tasks. The
usual decision follows (argmax, or the threshold). The folds of one k-fold sweep are its typical members.

`Ensemble` has `Inference`'s interface, so the module's validation, test and predict steps use it unchanged: the
first member is the module the trainer runs, with `module.inference` set to the ensemble. Every member is read by
`load_module` (data only, configs checked against the allow-list), and members whose task or classes differ are
refused naming both files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from segkit.config.checks import ConfigError
from segkit.errors import Refusal
from segkit.task_kind import TaskKind
from segkit.training.inference import MULTICLASS, Inference, build_inference
from segkit.training.module import SegmentationModule, load_module

log = logging.getLogger(__name__)

# What members must share: the data config's facts that give the probabilities their meaning.
SHARED_FACTS = ("task", "num_classes", "class_names", "in_channels", "ignore_index")
FACT_DEFAULTS = {"task": "multiclass", "ignore_index": 255, "in_channels": 3}


class EnsembleError(Refusal, ValueError):
    """Checkpoints that cannot be averaged: another task, other classes, other input channels."""


class Ensemble:
    """Averages the probabilities of several networks, each through its own `Inference`.

    Args:
        members: (network, its inference) pairs; the first is the module the trainer runs.
        names: what each member is called in reports (its checkpoint file).

    Example:
        >>> import torch
        >>> from segkit.models import UNet
        >>> from segkit.training.ensemble import Ensemble
        >>> from segkit.training.inference import Inference
        >>> nets = [UNet({"name": "resnet18"}, num_classes=3).eval() for _ in range(2)]
        >>> ensemble = Ensemble([(net, Inference()) for net in nets], ["a.ckpt", "b.ckpt"])
        >>> ensemble(nets[0], torch.rand(1, 3, 32, 32)).shape
        torch.Size([1, 3, 32, 32])
        >>> str(ensemble).split(" (")[0], ensemble.names
        ('Ensemble of 2', ['a.ckpt', 'b.ckpt'])
    """

    is_plain = False  # several networks: no single network's logits, so no loss to compare

    def __init__(self, members: Sequence[tuple[nn.Module, Inference]], names: Sequence[str]) -> None:
        if len(members) < 1 or len(members) != len(names):
            raise ValueError("Ensemble: one name per member, at least one member.")
        self.members = list(members)
        self.names = [str(n) for n in names]
        self.threshold = self.members[0][1].threshold

    def __repr__(self) -> str:
        inferences = {repr(inference) for _, inference in self.members}
        how = inferences.pop() if len(inferences) == 1 else "each its own inference"
        return f"Ensemble of {len(self.members)} ({how}): {', '.join(self.names)}"

    @torch.no_grad()
    def predict(self, net: nn.Module | None, images: torch.Tensor, task: TaskKind = MULTICLASS) -> torch.Tensor:
        """The task's prediction from the averaged probabilities: class ids (B, H, W), or multi-label's 0/1."""
        return task.decide(self(net, images, task), self.threshold)

    @torch.no_grad()
    def __call__(self, net: nn.Module | None, images: torch.Tensor, task: TaskKind = MULTICLASS) -> torch.Tensor:
        """The members' probabilities (B, num_classes, H, W), float32, averaged. `net` is the module whose step
        calls (the first member); every member runs itself, moved on first use to the images' device and to the
        parameter type of `net` (the trainer moves and converts only the module it runs, e.g. bf16-true)."""
        return self._average(net, images, lambda member, inference: inference(member, images, task))

    def _average(self, net: nn.Module | None, images: torch.Tensor, probabilities: Callable) -> torch.Tensor:
        if net is not None and not any(net is member for member, _ in self.members):
            raise ValueError("Ensemble: called with a network that is not one of its members.")
        reference = _parameter(net) if net is not None else None
        dtype = reference.dtype if reference is not None else None
        total = None
        for member, inference in self.members:
            own = _parameter(member)
            if own is not None and (own.device != images.device or (dtype is not None and own.dtype != dtype)):
                member.to(device=images.device, dtype=dtype)
            probs = probabilities(member, inference).float()
            total = probs if total is None else total + probs
        return total / len(self.members)

    # Large images (the windowed path of predict.py and evaluate.py): the members score the same windows, and
    # their probabilities of each window are averaged, then blended.

    @property
    def _first(self) -> Inference:
        return self.members[0][1]

    mode = property(lambda self: self._first.mode)
    crop_size = property(lambda self: self._first.crop_size)
    stride = property(lambda self: self._first.stride)
    blend = property(lambda self: self._first.blend)
    window_above = property(lambda self: self._first.window_above)

    @property
    def window_batch(self) -> int:
        return self._first.window_batch

    @window_batch.setter
    def window_batch(self, value: int) -> None:
        for _, inference in self.members:
            inference.window_batch = int(value)

    def is_large(self, size: Sequence[int]) -> bool:
        return self._first.is_large(size)

    def as_windows(self, crop_size: Sequence[int]) -> Ensemble:
        """The ensemble over windows (`Inference.as_windows` of each member); its members must lay them out alike."""
        windowed = Ensemble(
            [(member, inference.as_windows(crop_size)) for member, inference in self.members], self.names
        )
        layouts = {(inference.crop_size, inference.stride, inference.blend) for _, inference in windowed.members}
        if len(layouts) > 1:
            raise ConfigError(
                f"The ensemble's members slide different windows over large images ({sorted(layouts)}: window, "
                "stride, blend), so their windows cannot be averaged. Fix: inference=slide "
                "inference.crop_size=[512,512] (one window for all)."
            )
        return windowed

    def window_scores(self, net: nn.Module | None, windows: torch.Tensor, task: TaskKind = MULTICLASS) -> torch.Tensor:
        """The members' probabilities of a batch of windows, averaged: what the windowed path blends."""

        def probabilities(member: nn.Module, inference: Inference) -> torch.Tensor:
            return inference.blended_probabilities(inference.window_scores(member, windows, task), task)

        return self._average(net, windows, probabilities)

    def blended_probabilities(self, blended: torch.Tensor, task: TaskKind = MULTICLASS) -> torch.Tensor:
        return blended  # blended probabilities already


def _parameter(net: nn.Module) -> torch.Tensor | None:
    return next(net.parameters(), None)


def shared_facts(data: dict[str, Any]) -> dict[str, Any]:
    return {key: data.get(key, FACT_DEFAULTS.get(key)) for key in SHARED_FACTS}


def check_members(modules: Sequence[SegmentationModule], paths: Sequence[Path]) -> None:
    """Refuses members whose task, classes, input channels or ignored label differ from the first's."""
    first = shared_facts(modules[0].hparams.data)
    for module, path in zip(modules[1:], paths[1:]):
        facts = shared_facts(module.hparams.data)
        differ = [key for key in SHARED_FACTS if facts[key] != first[key]]
        if differ:
            what = "; ".join(f"data.{key} {first[key]!r} vs {facts[key]!r}" for key in differ)
            raise EnsembleError(
                f'Checkpoints "{paths[0]}" and "{path}" cannot be ensembled: their {", ".join(differ)} differ '
                f"({what}), so their probabilities do not mean the same. Fix: ensemble checkpoints trained on one "
                "task and class set (the folds of one k-fold sweep), or score them one at a time."
            )


def load_models(
    paths: Sequence[str | Path],
    inference: dict | None,
    trusted: Sequence[str] = (),
    data_of: Callable[[SegmentationModule], dict] | None = None,
) -> SegmentationModule:
    """The module that scores `paths`, with its `inference` set: for one checkpoint the module and the `inference`
    config's `Inference`; for several, the first checkpoint's module carrying an `Ensemble` of all of them. Each
    file is read by `load_module`.

    Args:
        paths: checkpoint files (segkit.runs.model_files.model_files resolves directories).
        inference: the command's `inference` config as a dict (None: a plain whole-image pass).
        trusted: the command's `trusted_modules`.
        data_of: the data config a member's inference follows (slide's window defaults to its crop_size); by
            default the member's own.
    """
    paths = [Path(p) for p in paths]
    modules = [load_module(path, trusted=trusted) for path in paths]
    check_members(modules, paths)
    data_of = data_of or (lambda module: module.hparams.data)
    inferences = [build_inference(inference, data_of(module)) for module in modules]
    first = modules[0]
    if len(modules) == 1:
        first.inference = inferences[0]
    else:
        first.inference = Ensemble(list(zip(modules, inferences)), [str(p) for p in paths])
        log.info("Ensemble of %d checkpoints: %s", len(paths), ", ".join(map(str, paths)))
    return first


def member_names(module: SegmentationModule) -> list[str] | None:
    """The checkpoints an ensemble averages (None for a single model), for reports."""
    inference = module.inference
    return list(inference.names) if isinstance(inference, Ensemble) else None
