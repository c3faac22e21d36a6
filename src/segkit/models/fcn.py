"""FCN (Long, Shelhamer & Darrell, 2015): score the deepest features, fuse skips, upsample to input size."""

from __future__ import annotations

import torch
from torch import nn

from segkit.models.base import SegmentationModel
from segkit.models.layers import ConvBNReLU, Upsample

VARIANTS = ("32s", "16s", "8s")  # FCN-Ns: the finest stride whose scores are fused is N


def fused_strides(variant: str, strides: list[int]) -> list[int]:
    """The strides FCN-`variant` scores, deepest first: 8s on a stride-32 backbone is [32, 16, 8].

    Taken from the backbone's real strides: a variant whose strides the backbone does not give (8s on a
    backbone whose features are all at stride 16) is refused instead of summing maps of one stride."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown FCN variant '{variant}'. Fix: use one of {list(VARIANTS)}.")
    finest, deepest = int(variant[:-1]), strides[-1]
    chain = _halvings(deepest, finest)
    missing = [s for s in chain[1:] if s not in strides]
    if chain and not missing:
        return chain
    possible = [v for v in VARIANTS if (c := _halvings(deepest, int(v[:-1]))) and all(s in strides for s in c[1:])]
    why = f"it has no stride-{missing[0]} features" if chain else f"its deepest stride is {deepest}"
    fix = (
        f"model.variant={possible[-1]} for this backbone"
        if possible
        else "a backbone with features at strides 8, 16 and 32"
    )
    if len(set(strides)) == 1:
        fix += ", or, for a plain ViT, backbone.pyramid=null (its default), which gives strides 4, 8, 16 and 32"
    raise ValueError(
        f"FCN-{variant} fuses the scores of every stride from the deepest down to {finest}, but the backbone gives "
        f"strides {strides}: {why}. Fix: {fix}."
    )


def _halvings(deepest: int, finest: int) -> list[int]:
    """[deepest, deepest / 2, ..., finest], or [] when finest is not deepest / 2**k."""
    chain = [deepest]
    while chain[-1] > finest and chain[-1] % 2 == 0:
        chain.append(chain[-1] // 2)
    return chain if chain[-1] == finest else []


class FCNDecoder(nn.Module):
    """`32s` scores the deepest map only; `16s` and `8s` add scores of the stride-16 and stride-8 maps after
    a 2x upsampling, as in the paper's skip architecture. `fused_strides` says which strides are fused."""

    def __init__(
        self,
        channels: list[int],
        strides: list[int],
        num_classes: int,
        variant: str = "32s",
        upsample: str = "bilinear",
        head_channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.fused_strides = fused_strides(variant, list(strides))
        # The last feature at each stride is the one scored (as the UNet takes its skips).
        index = {stride: i for i, stride in enumerate(strides)}
        self.skip_index = [index[s] for s in self.fused_strides[1:]]
        self.head = nn.Sequential(ConvBNReLU(channels[-1], head_channels), nn.Dropout2d(dropout))
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        # Skip scorers and 2x upsamplers, deepest skip first.
        self.skip_scores = nn.ModuleList(nn.Conv2d(channels[i], num_classes, 1) for i in self.skip_index)
        for (
            score
        ) in self.skip_scores:  # skips start silent: training begins from the coarse prediction, as in the paper
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
        self.skip_up = nn.ModuleList(Upsample(num_classes, 2, upsample) for _ in self.skip_index)
        self.final_up = Upsample(num_classes, self.fused_strides[-1], upsample, depthwise=True)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        logits = self.classifier(self.head(features[-1]))
        for index, score, up in zip(self.skip_index, self.skip_scores, self.skip_up):
            skip = features[index]
            logits = up(logits, skip.shape[-2:]) + score(skip)
        return self.final_up(logits, size)


class FCN(SegmentationModel):
    """FCN (Long, Shelhamer & Darrell, 2015) over a timm encoder: a 3x3 conv head and a 1x1 classifier on the
    deepest features; the 16s and 8s variants add 1x1 scores of the stride-16 and stride-8 features after a 2x
    upsampling (zero-initialised, as in the paper). `model=fcn` in a config.

    Args:
        backbone: the `Backbone`'s arguments, as `conf/backbone/*.yaml` gives them: `name` (any timm model with
            `features_only`), `pretrained`, `weights`, `out_indices`, `pyramid` and other `timm.create_model` keys.
        num_classes: classes the logits score, at least 2 (`${data.num_classes}`).
        in_channels: channels of the images, any number (`${data.in_channels}`).
        variant: "32s" (the deepest features only), "16s" or "8s": the finest stride whose scores are fused.
        upsample: "bilinear", or "transposed" (learned transposed convolutions initialised to bilinear).
        head_channels: width of the conv head.
        dropout: dropout before the classifier.

    Returns logits `(B, num_classes, H, W)` for images `(B, in_channels, H, W)` in [0, 1], at the images' own
    size for any H and W.

    Example:
        >>> import torch
        >>> from segkit.models import FCN
        >>> net = FCN({"name": "resnet18"}, num_classes=3, variant="8s").eval()
        >>> net(torch.rand(2, 3, 45, 61)).shape
        torch.Size([2, 3, 45, 61])
    """

    def __init__(
        self,
        backbone: dict,
        num_classes: int,
        in_channels: int = 3,
        variant: str = "32s",
        upsample: str = "bilinear",
        head_channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(backbone, num_classes, in_channels)
        self.decoder = FCNDecoder(
            self.backbone.channels, self.backbone.strides, num_classes, variant, upsample, head_channels, dropout
        )
