"""What a pixel's label is (`data.task`), and what follows from it everywhere else: the network's output channels,
the activation that turns logits into probabilities, and the decision that turns probabilities into a prediction.

- multiclass: one class of `num_classes` per pixel, exclusive: a softmax over `num_classes` channels, the argmax.
  Masks are class ids (H, W).
- binary: a positive class or not: one channel under a sigmoid, positive where its probability reaches
  `threshold`. The classes are two (`class_names`: negative, positive) and masks are class ids (H, W) in {0, 1}, as
  in multiclass, so the metrics, reports and pictures of two classes apply unchanged.
- multilabel: any set of `num_classes` labels per pixel: a sigmoid per channel, each label thresholded on its own.
  Masks are (C, H, W), 1 where the pixel has the label, 0 where not (`ignore_index`: unknown).

A leaf (besides segkit.errors), so that data, models and training agree on one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segkit.errors import Refusal

TASKS = ("multiclass", "binary", "multilabel")


class TaskError(Refusal, ValueError):
    """A task that does not fit the classes, or a loss that does not fit the task."""


@dataclass(frozen=True)
class TaskKind:
    """One of `TASKS`, with what it decides.

    Args:
        name: "multiclass", "binary" or "multilabel".

    Example:
        >>> import torch
        >>> from segkit.task_kind import TaskKind
        >>> binary = TaskKind("binary")
        >>> binary.out_channels(2)
        1
        >>> probs = binary.probabilities(torch.tensor([[[[-2.0, 3.0]]]]))  # (1, 1, 1, 2) logits
        >>> probs.shape, binary.decide(probs, threshold=0.5).tolist()
        (torch.Size([1, 2, 1, 2]), [[[0, 1]]])
    """

    name: str = "multiclass"

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise TaskError(
                f"data.task={self.name!r} is not one of {', '.join(TASKS)}. Fix: multiclass (exclusive classes, "
                "softmax), binary (one positive class, sigmoid) or multilabel (several labels per pixel)."
            )

    @classmethod
    def of(cls, data: dict | None) -> TaskKind:
        """The task of a data config (a checkpoint's own included); configs from before tasks are multiclass."""
        return cls(str((data or {}).get("task") or "multiclass"))

    @property
    def sigmoid(self) -> bool:
        """Independent sigmoid outputs (binary, multilabel) rather than one softmax over the classes."""
        return self.name != "multiclass"

    @property
    def multilabel(self) -> bool:
        return self.name == "multilabel"

    def out_channels(self, num_classes: int) -> int:
        """The network's output channels for `num_classes` classes (binary: one, the positive class's logit)."""
        return 1 if self.name == "binary" else int(num_classes)

    def check_classes(self, num_classes: int, class_names: list[str] | None = None) -> None:
        """A start-up check of the class facts against the task."""
        if self.name == "binary" and int(num_classes) != 2:
            names = f" (class_names {list(class_names)})" if class_names else ""
            raise TaskError(
                f"data.task=binary needs data.num_classes=2, the negative and the positive class{names}; got "
                f"{num_classes}. Fix: data.num_classes=2 with class_names [<negative>, <positive>], or data.task="
                "multiclass (exclusive classes) or multilabel (several labels per pixel)."
            )
        if int(num_classes) < (1 if self.multilabel else 2):
            raise TaskError(f"data.num_classes={num_classes} is too few for data.task={self.name}.")

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities (B, num_classes, H, W) in float32: a softmax, a sigmoid per label, or for binary
        the negative and the positive class's (1 - p, p) from its one channel."""
        logits = logits.float()
        if self.name == "multiclass":
            return logits.softmax(dim=1)
        probs = logits.sigmoid()
        return torch.cat([1 - probs, probs], dim=1) if self.name == "binary" else probs

    def decide(self, probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        """The prediction from `probabilities`: class ids (B, H, W) (multiclass: the most probable class; binary:
        1 where the positive class's probability reaches `threshold`), or multilabel's (B, C, H, W) uint8 with 1
        for every label whose probability reaches it."""
        if self.name == "multiclass":
            # On CPU an argmax across the channels of an NCHW tensor is ~15x slower than on a channels-last copy.
            return probs.contiguous(memory_format=torch.channels_last).argmax(dim=1)
        if self.name == "binary":
            return (probs[:, 1] >= threshold).long()
        return (probs >= threshold).to(torch.uint8)

    def predict(self, logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        """`decide(probabilities(logits))`, skipping the softmax where the argmax of the logits is the same."""
        if self.name == "multiclass":
            return self.decide(logits, threshold)
        return self.decide(self.probabilities(logits), threshold)
