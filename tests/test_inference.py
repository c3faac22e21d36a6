"""Inference modes agree with the plain forward pass wherever they must."""

import pytest
import torch
from torch import nn

from conftest import compose_config
from segkit.training.inference import Inference, build_inference
from segkit.training.module import build_module


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    """The default network, in eval mode (read-only here: built once for the module)."""
    return build_module(compose_config("train", [], tmp_path_factory.mktemp("unet"))).net.eval()


class Pointwise(nn.Module):
    """A 1x1 convolution: each pixel's logits depend on that pixel only, so windows, flips and padding
    cannot change them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def plain_probs(net, images):
    with torch.no_grad():
        return net(images).softmax(1)


def test_one_window_covering_the_image_is_the_plain_forward_pass(unet):
    net, images = unet, torch.rand(2, 3, 45, 70)
    slide = Inference(mode="slide", crop_size=(45, 70), stride=(30, 40))
    assert torch.allclose(slide(net, images), plain_probs(net, images), atol=1e-6)


def test_overlapping_windows_and_flips_of_a_pointwise_net_change_nothing():
    net, images = Pointwise(), torch.rand(2, 3, 50, 61)
    expected = plain_probs(net, images)
    for inference in (
        Inference(mode="slide", crop_size=(32, 32), stride=(20, 13)),
        Inference(mode="slide", crop_size=(64, 80)),  # larger than the image: padded, then cut
        Inference(flip=True),
        Inference(mode="slide", crop_size=(32, 32), flip=True),
    ):
        assert torch.allclose(inference(net, images), expected, atol=1e-6), inference


def test_scales_and_flips_give_probabilities_at_the_image_size(unet):
    net, images = unet, torch.rand(1, 3, 37, 53)
    probs = Inference(scales=[0.5, 1.0, 1.5], flip=True)(net, images)
    assert probs.shape == (1, 4, 37, 53)
    assert torch.allclose(probs.sum(1), torch.ones(1, 37, 53), atol=1e-5)
    assert torch.allclose(Inference(scales=[1.0])(net, images), plain_probs(net, images), atol=1e-6)


def test_windows_cover_every_pixel_once_at_least():
    class Ones(nn.Module):
        def forward(self, x):
            return torch.ones(x.shape[0], 2, *x.shape[-2:])

    images = torch.rand(1, 3, 100, 77)
    inference = Inference(mode="slide", crop_size=(40, 30), stride=(35, 29))
    assert torch.equal(inference.logits(Ones(), images), torch.ones(1, 2, 100, 77))  # averaged, never 0/0


def test_slide_takes_the_training_crop_by_default_and_names_bad_modes():
    inference = build_inference({"mode": "slide", "crop_size": None, "stride": None}, {"crop_size": [48, 96]})
    assert inference.crop_size == (48, 96) and inference.stride == (32, 64)
    with pytest.raises(ValueError, match="not one of"):
        Inference(mode="sliding")
    with pytest.raises(ValueError, match="needs inference.crop_size"):
        Inference(mode="slide")
