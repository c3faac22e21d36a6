"""Every decoder (tests/helpers/decoders.py, one line each) through the same checks, as the public model a config
builds: logits at the input's size for odd sizes, 1 and 4 input channels, channels-last memory format giving the
same logits, gradients reaching every parameter, and a torch.export file (any batch, height and width) matching
PyTorch at sizes it was not traced at. On resnet18 (random init) with narrow decoders and small inputs; the same
decoders on every backbone family: tests/test_transformer_backbones.py."""

import copy

import pytest
import torch

from helpers.decoders import DECODERS
from segkit.tasks.export import dynamic_shapes

BACKBONE = {"name": "resnet18"}  # pretrained=False: Backbone's default
STRIDES = [2, 4, 8, 16, 32]  # resnet18's
NUM_CLASSES = 3

pytestmark = [
    pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.name),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(scope="module")
def nets():
    """One network per (decoder, input channels), built once, in eval mode."""
    built = {}

    def get(decoder, channels: int = 3):
        if (decoder.name, channels) not in built:
            torch.manual_seed(0)
            net = decoder.build(BACKBONE, NUM_CLASSES, channels, STRIDES)
            assert net.backbone.strides == decoder.strides(STRIDES)  # DeepLabV3+'s dilated: [2, 4, 8, 16, 16]
            built[decoder.name, channels] = net.eval()
        return built[decoder.name, channels]

    return get


def test_logits_have_the_input_size_at_odd_sizes(nets, decoder):
    net = nets(decoder)
    with torch.no_grad():
        for batch, h, w in [(2, 37, 53), (1, 33, 95), (1, 17, 31), (1, 64, 64)]:
            assert net(torch.rand(batch, 3, h, w)).shape == (batch, NUM_CLASSES, h, w)


def test_one_and_four_input_channels(nets, decoder):
    with torch.no_grad():
        for channels in (1, 4):
            assert nets(decoder, channels)(torch.rand(2, channels, 45, 61)).shape == (2, NUM_CLASSES, 45, 61)
        with pytest.raises(ValueError, match="data.in_channels"):  # what the data config must say
            nets(decoder, 1)(torch.rand(1, 3, 32, 32))


def test_channels_last_gives_the_same_logits(nets, decoder):
    """What `model.channels_last=true` runs (the default): the network and its input in channels-last format."""
    net = nets(decoder)
    assert net.channels_last_problem is None
    fast = copy.deepcopy(net).to(memory_format=torch.channels_last)
    images = torch.rand(2, 3, 45, 61)
    with torch.no_grad():
        expected = net(images)
        got = fast(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_gradients_reach_every_parameter(nets, decoder):
    net = copy.deepcopy(nets(decoder)).train()
    net(torch.rand(2, 3, 50, 70)).square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert missing == []
    grads = [p.grad for p in net.parameters()]
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in (p.grad for p in net.backbone.encoder.parameters()))


def test_exports_for_every_size_and_matches_pytorch(nets, decoder):
    """export.py's torch.export graph: traced once at 67x93 for any batch, height and width (the file written and
    read back is tests/test_deploy.py's), matching PyTorch at sizes it was not traced at."""
    net = nets(decoder)
    assert net.dynamic_export_problem is None
    program = torch.export.export(net, (torch.rand(2, 3, 67, 93),), dynamic_shapes=dynamic_shapes(dynamic_size=True))
    for batch, h, w in [(1, 45, 61), (3, 64, 96)]:
        images = torch.rand(batch, 3, h, w)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(images), net(images), atol=1e-4, rtol=1e-4)
