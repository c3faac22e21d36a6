import pytest
import torch
import torch.nn.functional as F

from segkit.losses import CrossEntropyLoss, DiceLoss, FocalLoss, WeightedSum

IGNORE = 255


def batch(num_classes=4, h=9, w=11):
    torch.manual_seed(0)
    logits = torch.randn(2, num_classes, h, w)
    target = torch.randint(0, num_classes, (2, h, w))
    target[0, :3] = IGNORE
    return logits, target


def test_cross_entropy_ignores_ignore_index_and_weights_classes():
    logits, target = batch()
    valid = target != IGNORE
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid])
    assert torch.allclose(CrossEntropyLoss(IGNORE)(logits, target), expected)
    weights = [0.1, 1.0, 2.0, 3.0]
    weighted = CrossEntropyLoss(IGNORE, class_weights=weights)(logits, target)
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid], weight=torch.tensor(weights))
    assert torch.allclose(weighted, expected)


def test_label_smoothing_raises_the_loss_of_a_confident_correct_prediction():
    target = torch.randint(0, 3, (1, 4, 4))
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 20
    assert CrossEntropyLoss(IGNORE, label_smoothing=0.1)(logits, target) > CrossEntropyLoss(IGNORE)(logits, target) + 0.1


def test_dice_is_zero_for_a_perfect_prediction_and_ignores_ignored_pixels():
    _, target = batch()
    perfect = F.one_hot(torch.where(target == IGNORE, 0, target), 4).permute(0, 3, 1, 2).float() * 50
    perfect[0, :, :3] = torch.randn(4, 3, 11) * 50  # garbage where the mask says ignore
    assert DiceLoss(IGNORE, smooth=0.0)(perfect, target) < 1e-4
    assert DiceLoss(IGNORE)(batch()[0], target) > 0.3


def test_focal_with_gamma_zero_is_cross_entropy_and_down_weights_easy_pixels():
    logits, target = batch()
    assert torch.allclose(FocalLoss(IGNORE, gamma=0.0)(logits, target), CrossEntropyLoss(IGNORE)(logits, target))
    assert FocalLoss(IGNORE, gamma=2.0)(logits, target) < CrossEntropyLoss(IGNORE)(logits, target)


def test_weighted_sum_adds_weighted_terms():
    logits, target = batch()
    ce, dice = CrossEntropyLoss(IGNORE), DiceLoss(IGNORE)
    total = WeightedSum({"ce": ce, "dice": dice}, weights={"ce": 0.5})(logits, target)
    assert torch.allclose(total, 0.5 * ce(logits, target) + dice(logits, target))
    with pytest.raises(ValueError, match="lovasz"):
        WeightedSum({"ce": ce}, weights={"lovasz": 1.0})


@pytest.mark.parametrize("loss", [CrossEntropyLoss(IGNORE), DiceLoss(IGNORE), FocalLoss(IGNORE)])
def test_losses_compute_in_float32_under_bf16_autocast(loss):
    logits, target = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(logits.bfloat16(), target)
    assert value.dtype == torch.float32
    assert torch.isfinite(value)


def test_all_ignored_batch_gives_finite_losses():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), IGNORE)
    for loss in (DiceLoss(IGNORE), FocalLoss(IGNORE)):
        value = loss(logits, target)
        assert torch.isfinite(value)
