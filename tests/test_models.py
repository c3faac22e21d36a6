"""The models beyond what every decoder shares (tests/test_decoders.py): FCN's variants and skips, UNet's widths,
transposed upsampling, and the backbone's names, weights files and normalisation."""

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from segkit.models import FCN, UNet, UnknownBackboneError
from segkit.models.backbone import Backbone, PretrainedWeightsUnavailable
from segkit.models.layers import Upsample

RESNET = {"name": "resnet18"}


def logits_shape(model, batch, channels, h, w):
    model.eval()
    with torch.no_grad():
        return tuple(model(torch.rand(batch, channels, h, w)).shape)


# Each variant, each upsampling mode, and the variant with the most upsampling (8s) in both modes.
@pytest.mark.parametrize(
    "variant,upsample", [("32s", "bilinear"), ("16s", "transposed"), ("8s", "bilinear"), ("8s", "transposed")]
)
def test_fcn_variants_and_upsampling(variant, upsample):
    model = FCN(RESNET, num_classes=4, variant=variant, upsample=upsample)
    assert len(model.decoder.skip_scores) == {"32s": 0, "16s": 1, "8s": 2}[variant]
    has_deconv = any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())
    assert has_deconv == (upsample == "transposed")
    assert logits_shape(model, 2, 3, 50, 70) == (2, 4, 50, 70)


def test_fcn_skip_scores_start_at_zero_and_feed_the_output():
    fcn8 = FCN(RESNET, num_classes=3, variant="8s").eval()
    assert all(torch.count_nonzero(score.weight) == 0 for score in fcn8.decoder.skip_scores)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = fcn8(x)
        fcn8.decoder.skip_scores[-1].bias.fill_(1.0)  # the stride-8 skip
        assert not torch.allclose(fcn8(x), before, atol=1e-3)


def test_unet_decoder_width_count_must_match_backbone_depth():
    with pytest.raises(ValueError, match="needs 5 blocks"):
        UNet(RESNET, num_classes=2, decoder_channels=[64, 32])


def test_transposed_upsampling_starts_as_bilinear():
    x = torch.rand(1, 3, 8, 8)
    up = Upsample(3, 2, "transposed")
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    # Equal away from the border, where the transposed conv sees zero padding.
    assert torch.allclose(up(x, (16, 16))[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], atol=1e-6)


def test_unknown_backbone_names_close_matches():
    with pytest.raises(UnknownBackboneError) as err:
        UNet({"name": "resnet5O"}, num_classes=2)
    message = str(err.value)
    assert "resnet5O" in message and "resnet50" in message and "backbone.name" in message


def test_asking_for_weights_that_cannot_be_had_explains_the_fix(tmp_path):
    # No download happens: conftest sets HF_HUB_OFFLINE=1, and the cache is an empty folder.
    with pytest.raises(PretrainedWeightsUnavailable, match="backbone.pretrained=false"):
        Backbone("resnet18", pretrained=True, cache_dir=str(tmp_path))


def test_local_weights_file_is_loaded(tmp_path):
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.safetensors"
    save_file(reference.state_dict(), str(path))
    backbone = Backbone("resnet18", weights=str(path))
    loaded = backbone.encoder.state_dict()
    for key in ("conv1.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(loaded[key], reference.state_dict()[key])


def test_missing_weights_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        Backbone("resnet18", weights=str(tmp_path / "nope.pth"))


def test_backbone_normalises_with_its_own_mean_and_std():
    backbone = Backbone("resnet18", in_channels=3)
    assert torch.allclose(backbone.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    single = Backbone("resnet18", in_channels=1)
    assert single.mean.shape == (1, 1, 1, 1)
