"""Every backbone family x every decoder (tests/helpers/decoders.py; what each decoder must do on resnet18 is
tests/test_decoders.py's): logits at odd sizes with 1 and 3 channels, back-propagation, the plain
ViT's pyramid and the strides FCN really fuses, channels-last features, padding rules, start-up errors, the
oneDNN crash FastViT hit under channels-last, and exporting a backbone that pads for one size.

Tiny variants (timm arguments shrink Swin and the ViTs), small inputs, random init: the whole file runs in about
half a minute on 2 CPU cores. One network per family and channel count is built (`shells`); each decoder is put
on it in turn, and the network's own forward (padding, decoding, cropping) runs."""

import multiprocessing

import pytest
import timm
import torch

from helpers.decoders import DECODERS
from segkit.models import UNet, UnsupportedBackboneError
from segkit.models.backbone import Backbone, SubsampledConv1x1, _sidestep_onednn_1x1_stride_crash
from segkit.models.fcn import FCNDecoder
from segkit.models.layers import ceil_div
from segkit.models.pyramid import evenly_spaced_blocks
from segkit.models.unet import UNetDecoder

pytestmark = pytest.mark.usefixtures("one_thread")


TINY_SWIN = {"name": "swin_tiny_patch4_window7_224", "embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}
TINY_VIT16 = {"name": "vit_tiny_patch16_224", "depth": 4}
TINY_VIT14 = {"name": "vit_small_patch14_dinov2", "depth": 4, "embed_dim": 96, "num_heads": 2}
FAMILIES = {  # resnet18 with every decoder: tests/test_decoders.py
    "efficientnet_b0": {"name": "efficientnet_b0"},
    "convnext_atto": {"name": "convnext_atto"},
    "swin": TINY_SWIN,  # channels-last (NHWC) features, padded to a multiple of its patch (4)
    "vit_patch16": TINY_VIT16,  # plain ViT: one stride, made a pyramid
    "vit_patch14": TINY_VIT14,  # plain ViT whose patch is no power of two
    "pvt_v2_b0": {"name": "pvt_v2_b0"},
    "fastvit_t8": {"name": "fastvit_t8"},
    "maxvit": {"name": "maxvit_pico_rw_256", "img_size": 64},  # windowed attention: a multiple of 64
    "vit_fixed_size": {"name": "vit_tiny_patch16_224", "depth": 2, "dynamic_img_size": False, "img_size": 96},
}
# What each family needs of the input size: (multiple, fixed size).
SIZE_RULES = {
    "swin": (4, None),
    "vit_patch16": (16, None),
    "vit_patch14": (14, None),
    "maxvit": (64, None),
    "vit_fixed_size": (1, (96, 96)),
}
NUM_CLASSES = 3


# The decoders every decoder test runs through (tests/helpers/decoders.py), by name.
HEADS = {decoder.name: decoder for decoder in DECODERS}


@pytest.fixture(scope="module")
def shells():
    """One network per (family, input channels), built once: its decoder is replaced per test."""
    built = {}

    def get(family: str, channels: int):
        if (family, channels) not in built:
            torch.manual_seed(0)
            built[family, channels] = UNet(FAMILIES[family], NUM_CLASSES, channels, decoder_channels=[8] * 5)
        return built[family, channels]

    return get


# Every family with every decoder on RGB; every family on one channel with one decoder (each decoder in turn).
CASES = [(f, d, 3) for f in FAMILIES for d in HEADS] + [
    (f, list(HEADS)[i % len(HEADS)], 1) for i, f in enumerate(FAMILIES)
]


@pytest.mark.parametrize("family,decoder,channels", CASES)
def test_every_family_and_decoder_gives_logits_of_the_input_size_and_backpropagates(shells, family, decoder, channels):
    net = shells(family, channels)
    net.decoder = HEADS[decoder].head(net.backbone.channels, net.backbone.strides, NUM_CLASSES)
    net.train()
    net.zero_grad(set_to_none=True)
    logits = net(torch.rand(2, channels, 50, 70))
    assert logits.shape == (2, NUM_CLASSES, 50, 70)
    logits.square().mean().backward()
    grads = [p.grad for p in net.backbone.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)  # the loss reaches the encoder
    assert all(p.grad is not None for p in net.decoder.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_other_odd_sizes_and_the_size_rule(shells, family):
    net = shells(family, 3).eval()
    multiple, fixed = SIZE_RULES.get(family, (1, None))
    assert (net.backbone.size_multiple, net.backbone.fixed_size) == (multiple, fixed)
    if (multiple, fixed) == (1, None):
        assert net.dynamic_export_problem is None
    else:  # padded images: export.py exports these for one size
        assert "torch.export" in net.dynamic_export_problem
    with torch.no_grad():
        for h, w in [(33, 47), (17, 95)]:
            assert net(torch.rand(1, 3, h, w)).shape == (1, NUM_CLASSES, h, w)


def test_swin_features_come_channels_last_and_are_transposed(shells):
    backbone = shells("swin", 3).backbone
    assert backbone.nhwc
    features = backbone(torch.rand(1, 3, 64, 96))
    assert [f.shape[1] for f in features] == backbone.channels == [24, 48, 96, 192]
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 24), (8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize("family,padded", [("vit_patch16", (64, 80)), ("vit_patch14", (56, 70))])
def test_the_plain_vit_pyramid_has_strides_4_8_16_32(shells, family, padded):
    backbone = shells(family, 3).backbone
    assert backbone.pyramid is not None and backbone.strides == [4, 8, 16, 32]
    assert backbone.padded_size((50, 70)) == padded
    features = backbone(torch.rand(2, 3, 50, 70))
    assert [tuple(f.shape[-2:]) for f in features] == [ceil_div(padded, s) for s in (4, 8, 16, 32)]
    assert backbone.encoder.out_indices == [0, 1, 2, 3]  # four evenly spaced blocks of four


def test_pyramid_blocks_are_evenly_spaced_and_selectable():
    assert evenly_spaced_blocks(12) == [2, 5, 8, 11]
    assert evenly_spaced_blocks(24) == [5, 11, 17, 23]
    assert evenly_spaced_blocks(2) == [0, 0, 1, 1]
    last_only = Backbone(**TINY_VIT16, out_indices=[-1])  # ViTDet: every level from the last block
    assert last_only.pyramid_sources == [0, 0, 0, 0] and last_only.encoder.out_indices == [3]
    chosen = Backbone(**TINY_VIT16, out_indices=[0, 1, 1, 3])
    assert chosen.encoder.out_indices == [0, 1, 3] and chosen.pyramid_sources == [0, 1, 1, 2]
    with pytest.raises(UnsupportedBackboneError, match="out_indices"):
        Backbone(**TINY_VIT16, out_indices=[1, 3])


def test_unet_on_a_vit_gets_real_skips(shells):
    net = shells("vit_patch16", 3)
    decoder = UNetDecoder(net.backbone.channels, net.backbone.strides, 2, decoder_channels=[8] * 5)
    assert {s for s in decoder.block_strides if s in decoder.skip_index} == {16, 8, 4}


@pytest.mark.parametrize("family", FAMILIES)
def test_fcn_variants_fuse_the_strides_they_name(shells, family):
    backbone = shells(family, 3).backbone
    expected = {"32s": [32], "16s": [32, 16], "8s": [32, 16, 8]}
    for variant, strides in expected.items():
        decoder = FCNDecoder(backbone.channels, backbone.strides, 2, variant=variant)
        assert decoder.fused_strides == strides
        assert [backbone.strides[i] for i in decoder.skip_index] == strides[1:]


def test_fcn_refuses_strides_the_backbone_does_not_have():
    plain = Backbone(**TINY_VIT16, pyramid=False)  # every feature at stride 16
    assert plain.strides == [16] * len(plain.strides)
    with pytest.raises(ValueError, match="no stride-8 features.*backbone.pyramid"):
        FCNDecoder(plain.channels, plain.strides, 2, variant="8s")
    with pytest.raises(ValueError, match="deepest stride is 16"):
        FCNDecoder(plain.channels, plain.strides, 2, variant="32s")
    assert FCNDecoder(plain.channels, plain.strides, 2, variant="16s").fused_strides == [16]


def test_a_fixed_size_model_pads_up_to_its_size_and_names_larger_inputs(shells):
    net = shells("vit_fixed_size", 3).eval()
    with pytest.raises(ValueError, match="at most 96x96.*inference=slide"):
        net(torch.rand(1, 3, 97, 64))


def test_a_backbone_that_takes_no_size_fails_when_built_with_the_reason(monkeypatch):
    monkeypatch.setattr(Backbone, "_probe", lambda self, size, c, ch: "RuntimeError: window mismatch")
    with pytest.raises(
        UnsupportedBackboneError, match=r"fails on every input size tried(.|\n)*window mismatch(.|\n)*Fix"
    ):
        Backbone("resnet18")
    monkeypatch.undo()
    with pytest.raises(UnsupportedBackboneError, match="features_only.*Fix"):
        Backbone("crossvit_tiny_240")


def test_fastvit_strided_1x1_convolutions_are_rewritten_to_the_same_function(shells):
    backbone = shells("fastvit_t8", 3).backbone
    rewritten = [m for m in backbone.encoder.modules() if isinstance(m, SubsampledConv1x1)]
    assert rewritten and all(m.stride == (2, 2) and m.kernel_size == (1, 1) for m in rewritten)
    assert backbone.channels_last_problem is None
    reference = timm.create_model("fastvit_t8", features_only=True).eval()
    reference.load_state_dict(backbone.encoder.state_dict())
    backbone.eval()
    x = torch.rand(1, 3, 45, 61)
    with torch.no_grad():
        for got, want in zip(backbone.encoder(x), reference(x)):
            torch.testing.assert_close(got, want)


def _backward_channels_last() -> None:
    torch.set_num_threads(1)  # as a DataLoader worker does: OpenMP's pool does not survive a fork
    convs = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 1, 2, bias=False), torch.nn.Conv2d(16, 48, 1, 2))
    _sidestep_onednn_1x1_stride_crash(convs)
    convs.to(memory_format=torch.channels_last)
    for size in [(226, 226), (112, 112), (66, 66)]:
        x = torch.rand(2, 3, *size).contiguous(memory_format=torch.channels_last).requires_grad_()
        for _ in range(3):
            convs(x).square().mean().backward()


def test_the_rewritten_convolution_survives_channels_last_backward():
    """oneDNN corrupted the heap in this backward (FastViT's stem: a 1x1 stride-2 convolution of the RGB image,
    channels-last; on this machine the convolution as it is dies with a segmentation fault): run in a forked
    process, so that a regression fails this test and nothing else."""
    child = multiprocessing.get_context("fork").Process(target=_backward_channels_last)
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0, f"the backward died (exit code {child.exitcode})"


def test_a_padding_backbone_exports_for_one_size_and_matches_pytorch(tiny_train_cfg, tmp_path):
    """export.py on a plain ViT (images padded to its patch): ONNX and torch.export for the data's size, any
    batch, checked against PyTorch; the ONNX metadata says the size."""
    import json

    import onnx
    import onnxruntime

    from conftest import compose_config
    from segkit.tasks.export import export
    from segkit.training.module import build_module

    module = build_module(tiny_train_cfg("model=segformer", "backbone.name=vit_tiny_patch16_224", "+backbone.depth=2"))
    path = tmp_path / "vit.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    summary = export(compose_config("export", [f"ckpt_path={path}", f"output={tmp_path / 'export'}"], tmp_path / "run"))
    for fmt in ("onnx", "torch_export"):
        entry = summary["exports"][fmt]
        assert entry["image_size"] == [40, 56] and entry["max_abs_diff"] < 1e-4
        assert {tuple(c["input"][2:]) for c in entry["checks"]} == {(40, 56)}
    session = onnxruntime.InferenceSession(str(tmp_path / "export/model.onnx"), providers=["CPUExecutionProvider"])
    images = torch.rand(5, 3, 40, 56)
    with torch.no_grad():
        expected = module.net.eval()(images).numpy()
    assert abs(session.run(None, {"images": images.numpy()})[0] - expected).max() < 1e-4
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "export/model.onnx")).metadata_props}
    assert "(B, C, 40, 56)" in meta["input"]
