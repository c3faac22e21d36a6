"""A timm model as an encoder: any family, any input size, features shallow to deep as (B, C, H, W) maps.

- Names are checked at start-up (closest valid names on a typo); weights load offline from a file.
- Families that can take any size when asked are asked (`FLEXIBLE_KWARGS`: dynamic size and padding for ViTs,
  non-strict size for Swin); channels-last (NHWC) features are transposed.
- What a model still needs of the input size is measured once when it is built (a forward pass of zeros, no
  random numbers drawn): images are then padded at the bottom and right to the multiple it takes (or up to its
  one size), and the model crops the logits back. A model that takes no size at all fails here, at start-up.
- A plain ViT (every feature at one stride) becomes a multi-scale encoder through `SimplePyramid`.
- Convolutions that crash oneDNN under channels-last (see `_sidestep_onednn_1x1_stride_crash`) are rewritten
  to an identical computation that does not.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Sequence

import timm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from timm.models import get_arch_name, is_model_in_modules
from torch import nn

from segkit.errors import MissingFile, Refusal
from segkit.models.pyramid import PYRAMID_STRIDES, SimplePyramid, evenly_spaced_blocks

log = logging.getLogger(__name__)

# timm module -> the arguments that make its models take any input size (given only when the config does not).
FLEXIBLE_KWARGS: dict[str, dict[str, Any]] = {
    **dict.fromkeys(
        ("vision_transformer", "deit", "eva", "vision_transformer_hybrid"),
        # Not dynamic_img_pad: the images are padded to the patch size here, where the exported graph's sizes
        # stay in the floor-division terms every other layer uses (timm's padding computes the token grid with
        # math.ceil, whose terms torch.export cannot compare with them).
        {"dynamic_img_size": True},
    ),
    **dict.fromkeys(
        ("swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr", "vision_transformer_sam"),
        {"strict_img_size": False},
    ),
}


class UnknownBackboneError(Refusal, ValueError):
    """The backbone name is not a timm model."""


class PretrainedWeightsUnavailable(Refusal, RuntimeError):
    """Pretrained weights were asked for but could not be fetched (usually: no network)."""


class UnsupportedBackboneError(Refusal, ValueError):
    """A timm model that cannot serve as a segmentation encoder, found when the model is built."""


def check_backbone_name(name: str) -> None:
    """Fail early, with the closest valid names, instead of deep inside timm."""
    arch = name.split(".", 1)[0]
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=6, cutoff=0.6)
    hint = f" Closest timm models: {', '.join(close)}." if close else ""
    # No single quotes: Hydra shows the repr of this message, which would escape them.
    raise UnknownBackboneError(
        f'Unknown backbone "{name}".{hint} Fix: set backbone.name to a timm model name; '
        f'search them with timm.list_models("*{arch[:4]}*").'
    )


def flexible_kwargs(name: str) -> dict[str, Any]:
    """The timm arguments that let model `name` take any input size ({} when its family needs none)."""
    arch = get_arch_name(name)
    return next((dict(kw) for module, kw in FLEXIBLE_KWARGS.items() if is_model_in_modules(arch, [module])), {})


class Backbone(nn.Module):
    """A timm model as an encoder: a list of feature maps `(B, C, H, W)`, shallow to deep, with their `channels` and
    `strides`, for images of any size (padded to what the model takes: `padded_size`). Every decoder builds itself
    from one, given as the `backbone` config (`conf/backbone/*.yaml`).

    Images are expected in [0, 1]; they are normalised here with the backbone's own mean and std,
    so checkpoints, exports and predictions need no separate preprocessing step.

    Args:
        name: a timm model name (checked: a typo fails with the closest names), e.g. "resnet18", "convnext_tiny",
            "swin_tiny_patch4_window7_224", "vit_small_patch16_224".
        in_channels: channels of the images, any number (timm adapts the stem; the mean and std follow).
        pretrained: load timm's ImageNet weights (network or a filled Hugging Face cache needed).
        weights: a local timm/PyTorch state dict file (.safetensors, .pth) to load instead; wins over `pretrained`.
        out_indices: which stages timm returns; for a plain ViT, which blocks feed the pyramid (four, one per
            level, or one for all: ViTDet's last-block pyramid), by default four evenly spaced ones.
        normalize: normalise with the model's own mean and std (false: the images are used as they come).
        pyramid: null (auto: on for plain ViTs, whose features share one stride), true or false.
        output_stride: null (the model's own strides) or 8 or 16: the deepest stride, through dilated convolutions
            (timm's `output_stride`; CNNs take it, transformers do not: those fail here, naming the fix). Set by
            `model=deeplabv3plus` (`model.output_stride`), not by the backbone configs.
        freeze_bn: keep the encoder's batch-norm running statistics as they are (MMSegmentation's `norm_eval`):
            its BatchNorm layers stay in eval mode when the model is put in training mode; their affine weights
            still train whenever the encoder does. (Freezing the encoder's weights is the training's business:
            `backbone.freeze`, segkit.training.freezing.)
        **timm_kwargs: further keys go to `timm.create_model` (`drop_path_rate`, `img_size`, ...).

    Example:
        >>> import torch
        >>> from segkit.models import Backbone
        >>> backbone = Backbone("resnet18")
        >>> backbone.channels, backbone.strides
        ([64, 64, 128, 256, 512], [2, 4, 8, 16, 32])
        >>> [tuple(f.shape[-2:]) for f in backbone(torch.rand(1, 3, 64, 96))]
        [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        pretrained: bool = False,
        weights: str | None = None,
        out_indices: Sequence[int] | None = None,
        normalize: bool = True,
        pyramid: bool | None = None,
        output_stride: int | None = None,
        freeze_bn: bool = False,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        self.freeze_bn = bool(freeze_bn)
        check_backbone_name(name)
        # From a Hydra config the extra keys arrive as OmegaConf nodes; timm wants plain lists and numbers.
        timm_kwargs = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in timm_kwargs.items()}
        kwargs = dict(features_only=True, in_chans=in_channels, **{**flexible_kwargs(name), **timm_kwargs})
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise MissingFile(
                    f"Backbone weights file '{path}' does not exist. Fix: point backbone.weights at a "
                    "timm/PyTorch state dict (.safetensors, .pth, .bin) or set backbone.weights=null."
                )
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
            pretrained = True
        if output_stride is not None:
            kwargs["output_stride"] = int(output_stride)
        try:
            self.encoder = _create(name, pretrained, kwargs, user_kwargs=set(timm_kwargs))
        except TypeError as err:
            if output_stride is None or "output_stride" not in str(err):
                raise
            raise UnsupportedBackboneError(_cannot_dilate(name, int(output_stride), None)) from err
        if output_stride is not None:
            deepest = max(int(s) for s in self.encoder.feature_info.reduction())
            if deepest != int(output_stride):  # a family that takes the argument and ignores it (Swin)
                raise UnsupportedBackboneError(_cannot_dilate(name, int(output_stride), deepest))
        self.name = name
        fmt = getattr(self.encoder, "output_fmt", "NCHW")
        self.nhwc = str(getattr(fmt, "value", fmt)) == "NHWC"
        channels = [int(c) for c in self.encoder.feature_info.channels()]
        strides = [int(s) for s in self.encoder.feature_info.reduction()]
        mean, std = _normalization(self.encoder.pretrained_cfg, in_channels) if normalize else (None, None)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.channels_last_problem = _sidestep_onednn_1x1_stride_crash(self.encoder)

        # A plain ViT: every feature at one stride. Its pyramid takes four blocks (or one, four times).
        plain = len(set(strides)) == 1
        if pyramid is None:
            pyramid = plain and strides[0] > PYRAMID_STRIDES[0]
        self.pyramid: SimplePyramid | None = None
        self.pyramid_sources: list[int] = []
        raw_channels = list(channels)  # what the encoder itself returns
        if pyramid:
            if not plain:
                raise UnsupportedBackboneError(
                    f'backbone.pyramid=true is for plain ViTs, whose features share one stride; "{name}" gives '
                    f"strides {strides}. Fix: backbone.pyramid=null (or false) for this backbone."
                )
            blocks = self._pyramid_blocks(name, out_indices)
            returned = sorted(set(blocks))  # what the getter returns: each block once, shallow first
            raw_channels = channels[:1] * len(returned)
            self.pyramid_sources = [returned.index(b) for b in blocks]
            self.pyramid = SimplePyramid(channels[0], strides[0])
            channels, strides = self.pyramid.channels, list(self.pyramid.strides)
        self.channels: list[int] = channels
        self.strides: list[int] = strides
        self.in_channels = in_channels
        # What the model needs of the input size: a multiple (1: any size) or one size it pads up to.
        self.size_multiple, self.fixed_size = self._measure_size_rule(in_channels, raw_channels)
        self.min_size = _ceil_to(max(int(s) for s in self.encoder.feature_info.reduction()), self.size_multiple)
        # Why the network cannot be exported for every image size (None: it can); export.py then fixes one.
        self.dynamic_export_problem: str | None = None
        if self.pads:
            rule = (
                f"a multiple of {self.size_multiple}"
                if not self.fixed_size
                else f"exactly {self.fixed_size[0]}x{self.fixed_size[1]}"
            )
            log.info(
                "Backbone %s takes images of %s: inputs are padded (bottom, right) and logits cropped back.", name, rule
            )
            self.dynamic_export_problem = (
                f"backbone {name} takes images of {rule} (they are padded, the logits cropped), which torch.export "
                "cannot trace for symbolic sizes"
            )
        self.train(self.training)  # freeze_bn: the encoder's batch norms in eval mode from the start

    def train(self, mode: bool = True) -> Backbone:
        """As nn.Module's; with `freeze_bn` the encoder's batch norms stay in eval mode (their statistics kept)."""
        super().train(mode)
        if mode and self.freeze_bn:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    # -- construction helpers --------------------------------------------------------------------------------
    def _pyramid_blocks(self, name: str, out_indices: Sequence[int] | None) -> list[int]:
        """The block feeding each pyramid level (shallow first); timm's getter is told to return those."""
        depth = len(getattr(getattr(self.encoder, "model", None), "feature_info", []) or [])
        if out_indices is None:
            if not depth or not hasattr(self.encoder, "out_indices"):
                raise UnsupportedBackboneError(
                    f'Cannot tell the blocks of "{name}" to build its feature pyramid from. Fix: list them, '
                    "e.g. backbone.out_indices=[2,5,8,11] (four blocks, shallow first, or one for all levels)."
                )
            blocks = evenly_spaced_blocks(depth)
            self.encoder.out_indices = sorted(set(blocks))  # the getter passes them to forward_intermediates
        else:
            blocks = [int(i) % depth if depth else int(i) for i in out_indices]
            if len(blocks) == 1:
                blocks = blocks * len(PYRAMID_STRIDES)
            if hasattr(self.encoder, "out_indices"):
                self.encoder.out_indices = sorted(set(blocks))
        if len(blocks) != len(PYRAMID_STRIDES) or blocks != sorted(blocks):
            raise UnsupportedBackboneError(
                f"backbone.out_indices={list(out_indices or blocks)}: a plain ViT's pyramid takes "
                f"{len(PYRAMID_STRIDES)} blocks, shallow first (one per stride {list(PYRAMID_STRIDES)}), or one "
                f"block for every level. Fix: e.g. backbone.out_indices={evenly_spaced_blocks(depth or 12)}, or "
                "backbone.out_indices=null (evenly spaced)."
            )
        return blocks

    def _measure_size_rule(self, in_channels: int, channels: list[int]) -> tuple[int, tuple[int, int] | None]:
        """Find, with forward passes of zeros, the smallest input multiple the encoder takes (or its one size).

        Candidates: any size; the patch size; the deepest stride; the deepest stride times each window size
        (windowed attention partitions every stage); the model's fixed image size. Each is tried at a
        non-square size that is not a multiple of anything larger."""
        reduction = max(int(s) for s in self.encoder.feature_info.reduction())
        patches, windows, fixed = set(), set(), None
        for module in self.encoder.modules():
            for attr in ("window_size", "partition_size", "grid_size"):
                value = getattr(module, attr, None)
                if isinstance(value, int) or (
                    isinstance(value, (tuple, list)) and value and all(isinstance(v, int) for v in value)
                ):
                    windows.add(max(value) if isinstance(value, (tuple, list)) else value)
            patch = getattr(module, "patch_size", None)
            if isinstance(patch, (int, tuple, list)) and patch:
                patches.add(int(max(patch) if isinstance(patch, (tuple, list)) else patch))
            img_size = getattr(module, "img_size", None)
            if getattr(module, "strict_img_size", False) and isinstance(img_size, (tuple, list)) and fixed is None:
                fixed = (int(img_size[0]), int(img_size[1]))
        multiples = sorted({1, reduction, *patches, *(reduction * w for w in windows if 1 < w <= 64)})
        if fixed is None:  # models built for one size without saying so (attention biases, position tables)
            input_size = (getattr(self.encoder, "pretrained_cfg", None) or {}).get("input_size")
            fixed = (int(input_size[-2]), int(input_size[-1])) if input_size and len(input_size) == 3 else None
        errors = []
        training = self.encoder.training
        self.encoder.eval()
        try:
            for m in multiples:
                if m <= reduction:
                    size = (_ceil_to(2 * reduction + 3, m), _ceil_to(3 * reduction + 5, m))
                else:
                    size = (m, 2 * m)
                error = self._probe(size, in_channels, channels)
                if error is None:
                    return m, None
                errors.append(f"{size[0]}x{size[1]} (multiple of {m}): {error}")
            if fixed is not None:
                error = self._probe(fixed, in_channels, channels)
                if error is None:
                    log.warning(
                        "Backbone %s takes only %dx%d images: smaller ones are padded up to it, larger ones fail. "
                        "Give timm another size with backbone.img_size=[H,W] if your crops or windows are larger.",
                        self.name,
                        *fixed,
                    )
                    return 1, fixed
                errors.append(f"{fixed[0]}x{fixed[1]} (its own size): {error}")
        finally:
            self.encoder.train(training)
        tried = "\n  ".join(errors)
        raise UnsupportedBackboneError(
            f'Backbone "{self.name}" fails on every input size tried, so it cannot serve as an encoder here:\n  '
            f"{tried}\nFix: choose another timm backbone (CNNs, ConvNeXt, Swin, PVTv2, plain ViTs and most "
            "hierarchical transformers work), or give timm the size the model needs, e.g. backbone.img_size=[H,W] "
            "(a key timm takes), with crops and inference windows of that size."
        )

    def _probe(self, size: tuple[int, int], in_channels: int, channels: list[int]) -> str | None:
        """None when the encoder returns maps of the announced `channels` for an image of zeros of `size`."""
        try:
            with torch.no_grad():
                features = self._encode(torch.zeros(1, in_channels, *size))
        except Exception as err:  # noqa: BLE001 - any failure means: not this size
            return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
        got = [int(f.shape[1]) for f in features]
        if got != channels:
            return f"returned maps of {got} channels, announced {channels}"
        return None

    # -- forward -----------------------------------------------------------------------------------------------
    def padded_size(self, size: Sequence[int]) -> tuple[int, int]:
        """The size images of `size` are padded to before they enter the encoder."""
        h, w = size[0], size[1]
        if self.fixed_size is not None:
            fh, fw = self.fixed_size
            if torch.compiler.is_exporting():
                torch._check(h <= fh)
                torch._check(w <= fw)
            elif h > fh or w > fw:
                raise ValueError(
                    f'Backbone "{self.name}" takes images of at most {fh}x{fw} (it has one fixed size); got '
                    f"{h}x{w}. Fix: crops of at most that size (data.crop_size) and inference=slide with windows of "
                    f"it, or backbone.img_size=[H,W] to build it for larger images."
                )
            return fh, fw
        m = self.size_multiple
        if m > 1:
            h, w = (h + m - 1) // m * m, (w + m - 1) // m * m
        if torch.compiler.is_exporting():  # exported graphs take images of more than 32 pixels a side
            return h, w
        # Tiny images (a side under the deepest stride) are padded up to it: kernels larger than the last maps
        # (ConvNeXt's, PVT's downsampling) and training batch norms would fail on them.
        return max(h, self.min_size), max(w, self.min_size)

    @property
    def pads(self) -> bool:
        """Whether every image is padded to a size the model takes (beyond the tiny-image minimum)."""
        return self.size_multiple > 1 or self.fixed_size is not None

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.encoder(x)
        if self.nhwc:  # timm's channels-last features (Swin): the same memory, seen as (B, C, H, W)
            features = [f.permute(0, 3, 1, 2) for f in features]
        return list(features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.mean is not None:
            x = (x - self.mean) / self.std
        size = (x.shape[-2], x.shape[-1])
        padded = self.padded_size(size)
        if padded != size:  # after normalisation: the padding is the mean colour
            x = F.pad(x, (0, padded[1] - size[1], 0, padded[0] - size[0]))
            size = padded
        features = self._encode(x)
        if self.pyramid is not None:
            features = self.pyramid([features[i] for i in self.pyramid_sources], size)
        return features


# The families whose timm models dilate their last stages when given `output_stride` (checked in the tests for
# resnet18, efficientnet_b0, convnext_atto, regnetx_002, mobilenetv3; Swin, PVTv2, ViT, FastViT, MaxViT do not).
DILATABLE_FAMILIES = "CNNs such as ResNet, ResNeXt, EfficientNet, MobileNetV3, RegNet, ConvNeXt"


def _cannot_dilate(name: str, output_stride: int, deepest: int | None) -> str:
    """Why `name` cannot run at `output_stride`, with the fix (no single quotes: Hydra shows this repr)."""
    got = f" (its deepest features stay at stride {deepest})" if deepest is not None else ""
    return (
        f'Backbone "{name}" cannot be dilated to output stride {output_stride}{got}: timm dilates only '
        f"{DILATABLE_FAMILIES}; transformers (Swin, PVTv2, plain ViTs, MaxViT, FastViT, ...) cannot. Fix: "
        "model.output_stride=32 (no dilation: ASPP on the deepest features, at their own stride), or a CNN backbone."
    )


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _create(name: str, pretrained: bool, kwargs: dict, user_kwargs: set[str] = frozenset()) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        # A model of a flexible family that does not take one of the size arguments: build it without them
        # (the size rule measured afterwards pads what it needs).
        dropped = {k for k in flexible_kwargs(name) if k not in user_kwargs and f"'{k}'" in str(err)}
        if not dropped:
            raise
        return _create(name, pretrained, {k: v for k, v in kwargs.items() if k not in dropped}, user_kwargs)
    except AssertionError as err:
        # timm's default for ViT-style models is their last 3 blocks; a model with fewer (a small `depth`) takes
        # its last one, and the pyramid picks its blocks afterwards.
        if "out_indices" in kwargs or "out of range" not in str(err):
            raise
        return _create(name, pretrained, {**kwargs, "out_indices": 1}, user_kwargs)
    except (OSError, ConnectionError) as err:
        if not pretrained or "pretrained_cfg_overlay" in kwargs:
            raise
        raise PretrainedWeightsUnavailable(
            f"Pretrained weights for backbone '{name}' could not be loaded ({type(err).__name__}). "
            "This machine is probably offline. Fix: set backbone.pretrained=false, or download the weights "
            "on a connected machine (they land in the Hugging Face cache, HF_HOME) and copy that cache here, "
            "or give a local file with backbone.weights=/path/to/weights.safetensors."
        ) from err
    except RuntimeError as err:
        if "features_only" not in str(err):
            raise
        raise UnsupportedBackboneError(
            f"timm model '{name}' cannot return intermediate features (features_only). "
            "Fix: choose a CNN, a hierarchical transformer or a ViT, such as resnet*, convnext*, swin*, pvt_v2*, "
            "vit_*."
        ) from err


def _sidestep_onednn_1x1_stride_crash(encoder: nn.Module) -> str | None:
    """Rewrite the convolutions that crash oneDNN under channels-last; the reason when one cannot be.

    oneDNN (PyTorch 2.14's CPU convolutions) writes out of bounds computing the weight gradient of a 1x1
    convolution with stride 2 and fewer than 16 input channels on channels-last tensors: the process dies in
    backward ("corrupted double-linked list", a segmentation fault). Reparameterisable models have such a
    branch in their stem (FastViT's and MobileOne's `conv_scale`, on the RGB image). A 1x1 convolution with
    stride s equals the same convolution with stride 1 on every s-th pixel: these become `SubsampledConv1x1`,
    the same module (weights, state dict keys) computing it that way.
    """
    problems = []
    for name, conv in encoder.named_modules():
        if not (
            type(conv) is nn.Conv2d
            and conv.kernel_size == (1, 1)
            and conv.stride != (1, 1)
            and conv.groups == 1
            and conv.in_channels < 16
        ):
            continue
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            problems.append(name)
            continue
        conv.__class__ = SubsampledConv1x1
    if problems:
        return (
            f"the 1x1 stride-2 convolutions {problems} crash oneDNN in backward on channels-last tensors "
            "(PyTorch 2.14, CPU) and could not be rewritten"
        )
    return None


class SubsampledConv1x1(nn.Conv2d):
    """A strided 1x1 convolution computed as a stride-1 one on every stride-th pixel (the same function: see
    `_sidestep_onednn_1x1_stride_crash`). Exported graphs, which have no backward, keep the strided form."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            return super().forward(x)
        (ph, pw), (sh, sw) = self.padding, self.stride
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        return F.conv2d(x[..., ::sh, ::sw], self.weight, self.bias, 1, 0, self.dilation, self.groups)


def _normalization(pretrained_cfg: dict, in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's mean/std, averaged over channels when the input has another channel count."""
    mean = torch.tensor(pretrained_cfg.get("mean", (0.5,) * 3), dtype=torch.float32)
    std = torch.tensor(pretrained_cfg.get("std", (0.5,) * 3), dtype=torch.float32)
    if mean.numel() != in_channels:
        mean, std = mean.mean().repeat(in_channels), std.mean().repeat(in_channels)
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
