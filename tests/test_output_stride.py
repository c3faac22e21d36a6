"""DeepLabV3+'s output stride (8, 16: the backbone dilated through timm's `output_stride`; 32: no dilation), measured
on the map ASPP really receives; the start-up error of a family that cannot be dilated; the FPN's segmentation
blocks. What every decoder must do (sizes, channels, export): tests/test_decoders.py."""

import pytest
import torch

from segkit.models import FPN, DeepLabV3Plus, UnsupportedBackboneError
from segkit.models.backbone import Backbone
from segkit.models.deeplabv3plus import default_rates
from segkit.training.module import build_module

pytestmark = pytest.mark.usefixtures("one_thread")
NARROW = {"aspp_channels": 8, "low_level_channels": 8, "decoder_channels": 8}
TINY_SWIN = {"name": "swin_tiny_patch4_window7_224", "embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}


@pytest.mark.parametrize(
    "name,output_stride",
    [("resnet18", 8), ("resnet18", 16), ("resnet18", 32), ("efficientnet_b0", 8), ("convnext_atto", 16)],
)
def test_the_aspp_input_is_at_the_output_stride(name, output_stride):
    net = DeepLabV3Plus({"name": name}, num_classes=3, output_stride=output_stride, **NARROW).eval()
    assert net.backbone.strides[-1] == output_stride
    assert net.decoder.rates == default_rates(output_stride)
    seen = {}
    net.decoder.aspp.register_forward_hook(lambda m, args, out: seen.update(aspp=args[0].shape[-2:]))
    net.decoder.low_level.register_forward_hook(lambda m, args, out: seen.update(low=args[0].shape[-2:]))
    with torch.no_grad():
        assert net(torch.rand(1, 3, 64, 96)).shape == (1, 3, 64, 96)
    assert tuple(seen["aspp"]) == (64 // output_stride, 96 // output_stride)
    assert tuple(seen["low"]) == (16, 24)  # the skip: stride 4


def test_default_rates_follow_the_paper():
    assert default_rates(8) == [12, 24, 36] and default_rates(16) == [6, 12, 18] and default_rates(32) == [3, 6, 9]
    net = DeepLabV3Plus({"name": "resnet18"}, 3, atrous_rates=[2, 4], **NARROW)
    assert net.decoder.aspp.rates == [2, 4] and len(net.decoder.aspp.branches) == 4  # 1x1, two rates, pooling


def test_batch_size_one_trains_the_image_pooling_branch():
    net = DeepLabV3Plus({"name": "resnet18"}, 3, **NARROW).train()
    net(torch.rand(1, 3, 65, 67)).mean().backward()  # a BatchNorm over the pooled pixel would fail here


@pytest.mark.parametrize(
    "backbone",
    [TINY_SWIN, {"name": "pvt_v2_b0"}, {"name": "vit_tiny_patch16_224", "depth": 2}],
    ids=lambda b: b["name"],
)
def test_a_family_that_cannot_dilate_fails_at_start_up_naming_the_fix(backbone):
    with pytest.raises(
        UnsupportedBackboneError, match=r"cannot be dilated to output stride 16.*ResNet.*output_stride=32"
    ):
        DeepLabV3Plus(backbone, 3, output_stride=16, **NARROW)


def test_swin_ignores_the_dilation_silently_and_is_caught_then_runs_undilated():
    with pytest.raises(UnsupportedBackboneError, match="stay at stride 32"):
        Backbone(**TINY_SWIN, output_stride=8)
    net = DeepLabV3Plus(TINY_SWIN, 3, output_stride=32, **NARROW).eval()
    assert net.backbone.strides == [4, 8, 16, 32] and net.decoder.rates == [3, 6, 9]
    with torch.no_grad():
        assert net(torch.rand(1, 3, 45, 61)).shape == (1, 3, 45, 61)


def test_an_output_stride_deeplab_does_not_take_is_refused():
    with pytest.raises(ValueError, match="model.output_stride=4.*Fix"):
        DeepLabV3Plus({"name": "resnet18"}, 3, output_stride=4)


def test_the_config_error_reaches_the_user_at_start_up(tiny_train_cfg):
    cfg = tiny_train_cfg("model=deeplabv3plus", "backbone.name=pvt_v2_b0")
    with pytest.raises(Exception, match="cannot be dilated(.|\n)*model.output_stride=32"):
        build_module(cfg)


def test_fpn_blocks_bring_every_level_to_stride_4_and_merge():
    net = FPN({"name": "resnet18"}, 3, decoder_channels=16, segmentation_channels=8)
    assert net.decoder.level_strides == [4, 8, 16, 32] and net.decoder.upsamplings == [0, 1, 2, 3]
    assert [len(block.convs) for block in net.decoder.blocks] == [1, 1, 2, 3]
    assert net.decoder.classifier.in_channels == 8
    cat = FPN({"name": "resnet18"}, 3, decoder_channels=16, segmentation_channels=8, merge="cat").eval()
    assert cat.decoder.classifier.in_channels == 32
    with torch.no_grad():
        assert cat(torch.rand(1, 3, 37, 53)).shape == (1, 3, 37, 53)
    with pytest.raises(ValueError, match="model.merge=sum"):
        FPN({"name": "resnet18"}, 3, merge="max")
