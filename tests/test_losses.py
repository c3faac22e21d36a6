import pytest
import torch
import torch.nn.functional as F

from segkit.training.losses import CrossEntropyLoss, DiceLoss, FocalLoss, WeightedSum

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
    smoothed = CrossEntropyLoss(IGNORE, label_smoothing=0.1)(logits, target)
    assert smoothed > CrossEntropyLoss(IGNORE)(logits, target) + 0.1


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


@pytest.mark.parametrize(
    "criterion",
    [
        CrossEntropyLoss(ignore_index=IGNORE),
        DiceLoss(ignore_index=IGNORE),
        FocalLoss(ignore_index=IGNORE, gamma=2.0),
        WeightedSum({"ce": CrossEntropyLoss(ignore_index=IGNORE), "dice": DiceLoss(ignore_index=IGNORE)}),
    ],
    ids=["ce", "dice", "focal", "ce_dice"],
)
def test_losses_compute_in_float32_under_bf16_autocast(criterion):
    head = torch.nn.Conv2d(3, 4, 1)
    images = torch.rand(2, 3, 12, 10)
    target = torch.randint(0, 4, (2, 12, 10))
    target[:, :2] = IGNORE
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(images)
        loss = criterion(logits, target)
    assert logits.dtype == torch.bfloat16  # autocast is on: the loss gets half-precision logits
    assert loss.dtype == torch.float32
    # The same as a float32 loss of the same (bf16-rounded) logits: nothing inside ran in bf16.
    assert loss.item() == pytest.approx(criterion(logits.float(), target).item(), rel=1e-6)


def test_all_ignored_batch_gives_finite_losses():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), IGNORE)
    for loss in (DiceLoss(IGNORE), FocalLoss(IGNORE)):
        value = loss(logits, target)
        assert torch.isfinite(value)


# ------------------------------------------------------------------------------- Dice without a host sync


def dice_by_indexing(logits, target, ignore_index=IGNORE, smooth=1.0):
    """The Dice loss as it was written before it was made sync-free: boolean indexing of the present classes and a
    Python `if` on a tensor (both wait for the device)."""
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    valid = target != ignore_index
    onehot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2).float()
    valid = valid.unsqueeze(1).float()
    probs, onehot = probs * valid, onehot * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    cardinality = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + smooth) / (cardinality + smooth)
    present = onehot.sum(dims) > 0
    return 1 - (dice[present].mean() if present.any() else dice.mean())


def dice_cases():
    """(name, logits, target, smooth): every class present, some absent, one present, none (all ignored), a perfect
    prediction without smoothing, and bf16 logits."""
    torch.manual_seed(3)
    logits, target = batch(num_classes=5, h=13, w=7)
    yield "mixed with ignored pixels", logits, target, 1.0
    yield "two classes absent", logits, torch.where(target >= 3, 1, target), 1.0
    yield "one class present", logits, torch.where(target == IGNORE, IGNORE, 2), 1.0
    yield "every pixel ignored", logits, torch.full_like(target, IGNORE), 1.0
    clean = torch.where(target == IGNORE, 0, target)
    yield "perfect, no smoothing", F.one_hot(clean, 5).permute(0, 3, 1, 2).float() * 30, clean, 0.0
    yield "bf16 logits", logits.bfloat16(), target, 0.5


@pytest.mark.parametrize("name,logits,target,smooth", list(dice_cases()), ids=[c[0] for c in dice_cases()])
def test_dice_equals_the_boolean_indexing_formula_in_value_and_gradient(name, logits, target, smooth):
    ours = logits.detach().clone().requires_grad_(True)
    reference = logits.detach().clone().requires_grad_(True)
    value = DiceLoss(IGNORE, smooth=smooth)(ours, target)
    expected = dice_by_indexing(reference, target, smooth=smooth)
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    value.backward()
    expected.backward()
    torch.testing.assert_close(ours.grad, reference.grad, rtol=1e-5, atol=1e-7)


def test_dice_reads_no_tensor_on_the_host(monkeypatch):
    """On the CPU a sync cannot be seen, but its usual causes can: a tensor turned into a Python bool or number."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor was read on the host")

    logits, target = batch()
    for method in ("__bool__", "item", "tolist", "__float__", "__int__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, method, refuse)
    DiceLoss(IGNORE)(logits, target)
    DiceLoss(IGNORE)(logits, torch.full_like(target, IGNORE))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("loss", ["ce_dice", "dice", "focal", "ce"])
def test_a_training_step_loss_never_waits_for_the_gpu(tiny_train_cfg, loss):
    """Forward, loss, backward and the confusion-matrix update of a training step, with torch refusing any
    device-to-host sync (torch.cuda.set_sync_debug_mode("error") raises on one)."""
    from segkit.training.metrics import class_ids
    from segkit.training.module import build_module

    module = build_module(tiny_train_cfg(f"loss={loss}")).cuda().train()
    images = torch.rand(2, 3, 40, 56, device="cuda")
    masks = torch.randint(0, module.num_classes, (2, 40, 56), device="cuda")
    masks[:, :4] = IGNORE
    module(images).sum().backward()  # first call: cuDNN picks its algorithms (may sync), outside the check
    module.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        logits = module(images)
        value = module.criterion(logits, masks)
        value.backward()
        module.train_confusion.update(class_ids(logits.detach()), masks)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert value.dtype == torch.float32 and torch.isfinite(value).item()
