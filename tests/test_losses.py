import math

import pytest
import torch
import torch.nn.functional as F

from segkit.training.losses import (
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszLoss,
    OhemCrossEntropyLoss,
    TverskyLoss,
    WeightedSum,
)

IGNORE = 255


def batch(num_classes=4, h=9, w=11):
    torch.manual_seed(0)
    logits = torch.randn(2, num_classes, h, w)
    target = torch.randint(0, num_classes, (2, h, w))
    target[0, :3] = IGNORE
    return logits, target


# The losses of issue 22, in the settings the tests below share.
NEW_LOSSES = {
    "lovasz": LovaszLoss(IGNORE),
    "lovasz_all": LovaszLoss(IGNORE, classes="all"),
    "lovasz_per_image": LovaszLoss(IGNORE, per_image=True),
    "lovasz_all_per_image": LovaszLoss(IGNORE, classes="all", per_image=True),
    "tversky": TverskyLoss(IGNORE, alpha=0.3, beta=0.7),
    "focal_tversky": TverskyLoss(IGNORE, alpha=0.3, beta=0.7, gamma=0.75),
    "ohem": OhemCrossEntropyLoss(IGNORE, thresh=0.7, min_kept=20),
    "ohem_weighted": OhemCrossEntropyLoss(IGNORE, thresh=0.7, min_kept=20, class_weights=[0.5, 1.0, 2.0, 1.0]),
}


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
        LovaszLoss(ignore_index=IGNORE),
        LovaszLoss(ignore_index=IGNORE, classes="all", per_image=True),
        TverskyLoss(ignore_index=IGNORE, alpha=0.3, beta=0.7),
        TverskyLoss(ignore_index=IGNORE, gamma=0.75),
        OhemCrossEntropyLoss(ignore_index=IGNORE, thresh=0.7, min_kept=50, class_weights=[1.0, 2.0, 0.5, 1.0]),
    ],
    ids=["ce", "dice", "focal", "ce_dice", "lovasz", "lovasz_all_per_image", "tversky", "focal_tversky", "ohem"],
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
    for loss in (DiceLoss(IGNORE), FocalLoss(IGNORE), *NEW_LOSSES.values()):
        value = loss(logits, target)
        assert value.item() == 0.0  # nothing labelled: nothing to learn, and no NaN
        value.backward()
        assert torch.isfinite(logits.grad).all()
        logits.grad = None


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


GPU_CASES = [*("ce_dice", "dice", "focal", "ce", "lovasz", "ce_lovasz", "tversky", "ohem"), "bce_dice-multilabel"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", GPU_CASES)
def test_a_training_step_loss_never_waits_for_the_gpu(tiny_train_cfg, case):
    """Forward, loss, backward and the confusion-matrix update of a training step, with torch refusing any
    device-to-host sync (torch.cuda.set_sync_debug_mode("error") raises on one)."""
    from segkit.training.module import build_module

    loss, _, task = case.partition("-")
    data = ["data=synthetic_multilabel"] if task == "multilabel" else []
    module = build_module(tiny_train_cfg(f"loss={loss}", *data)).cuda().train()
    images = torch.rand(2, 3, 40, 56, device="cuda")
    shape = (2, module.num_classes, 40, 56) if task == "multilabel" else (2, 40, 56)
    masks = torch.randint(0, 2 if task == "multilabel" else module.num_classes, shape, device="cuda")
    masks[..., :4, :] = IGNORE
    module(images).sum().backward()  # first call: cuDNN picks its algorithms (may sync), outside the check
    module.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        logits = module(images)
        value = module.criterion(logits, masks)
        value.backward()
        module.train_confusion.update(module.task.predict(logits.detach()), masks)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert value.dtype == torch.float32 and torch.isfinite(value).item()


# ------------------------------------------------------------------------------- Lovász-Softmax


def jaccard_loss_of_set(mispredicted: set, foreground: set) -> float:
    """The set function Lovász-Softmax extends: 1 - IoU of a class when the pixels `mispredicted` are wrong."""
    union = foreground | mispredicted
    return 1 - len(foreground - mispredicted) / len(union) if union else 0.0


def lovasz_by_level_sets(errors: list[float], foreground: set) -> float:
    """The Lovász extension as an integral over thresholds, integral_0^1 Delta({i: errors_i >= t}) dt, summed exactly
    over the steps of that function of t: no sorting of single pixels, no increments, ties handled by the sets."""
    levels = sorted(set(errors) | {0.0}, reverse=True)
    return sum(
        (high - low) * jaccard_loss_of_set({i for i, e in enumerate(errors) if e >= high}, foreground)
        for high, low in zip(levels, levels[1:])
    )


def lovasz_softmax_reference(logits, target, classes="present", per_image=False):
    """Lovász-Softmax by brute force in float64: a loop over images (or the batch as one), classes and the level
    sets, on the valid pixels selected by boolean indexing."""
    probs = logits.double().softmax(1)
    groups = [(probs[i : i + 1], target[i : i + 1]) for i in range(len(target))] if per_image else [(probs, target)]
    image_losses = []
    for p, t in groups:
        valid = t != IGNORE
        if not valid.any():
            continue  # an image with no labelled pixel counts for nothing
        labels = t[valid].tolist()
        class_losses = []
        for c in range(probs.shape[1]):
            foreground = {i for i, label in enumerate(labels) if label == c}
            if classes == "present" and not foreground:
                continue
            errors = [abs((label == c) - q) for label, q in zip(labels, p[:, c][valid].tolist())]
            class_losses.append(lovasz_by_level_sets(errors, foreground))
        image_losses.append(sum(class_losses) / len(class_losses) if class_losses else 0.0)
    return sum(image_losses) / len(image_losses) if image_losses else 0.0


def probs_logits(probs):
    """Logits (1, C, 1, P) whose softmax is `probs` (C lists of P probabilities)."""
    return torch.tensor(probs, dtype=torch.float32).log().unsqueeze(0).unsqueeze(2)


def test_lovasz_of_a_tiny_example_is_its_hand_computed_value():
    # Class 1 (probabilities .9 .4 .3, truth 1 1 0): errors .1 .6 .3, sorted .6 (fg) .3 (bg) .1 (fg); the Jaccard loss
    # of the growing sets is 1 - 1/2, 1 - 1/3, 1 - 0/3, so .6 * 1/2 + .3 * (2/3 - 1/2) + .1 * (1 - 2/3) = 23/60.
    # Class 0 (.1 .6 .7, truth 0 0 1): errors .1 .6 .3, sorted .6 (bg) .3 (fg) .1 (bg): 1/2, 1, 1, so .6/2 + .3/2
    # = 27/60. The mean: 50/120 = 5/12.
    logits, target = probs_logits([[0.1, 0.6, 0.7], [0.9, 0.4, 0.3]]), torch.tensor([[[1, 1, 0]]])
    assert LovaszLoss(IGNORE)(logits, target).item() == pytest.approx(50 / 120, abs=1e-6)
    assert lovasz_softmax_reference(logits, target) == pytest.approx(50 / 120, abs=1e-6)
    # An ignored pixel, however wrong, changes nothing.
    logits4 = probs_logits([[0.1, 0.6, 0.7, 0.99], [0.9, 0.4, 0.3, 0.01]])
    assert LovaszLoss(IGNORE)(logits4, torch.tensor([[[1, 1, 0, IGNORE]]])).item() == pytest.approx(5 / 12)


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("per_image", [False, True], ids=["batch", "per_image"])
def test_lovasz_equals_the_level_set_integral_by_brute_force(classes, per_image):
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 3, 5) * 2
    target = torch.randint(0, 3, (3, 3, 5))  # class 3 never in the truth: 'present' and 'all' differ
    target[0, 0] = IGNORE
    target[2] = IGNORE  # an image with no labelled pixel
    value = LovaszLoss(IGNORE, classes=classes, per_image=per_image)(logits, target)
    assert value.item() == pytest.approx(lovasz_softmax_reference(logits, target, classes, per_image), abs=1e-5)


def test_lovasz_of_one_hot_predictions_is_one_minus_the_mean_iou():
    torch.manual_seed(2)
    target = torch.randint(0, 4, (2, 6, 7))
    target[1, :2] = IGNORE
    predicted = torch.where(torch.rand(2, 6, 7) < 0.3, torch.randint(0, 4, (2, 6, 7)), target.clamp_max(3))
    logits = F.one_hot(predicted, 4).permute(0, 3, 1, 2).float() * 100
    valid = target != IGNORE
    ious = []
    for c in range(4):
        truth, guess = (target == c) & valid, (predicted == c) & valid
        if truth.any():
            ious.append(((truth & guess).sum() / (truth | guess).sum()).item())
    assert len(ious) == 4 and min(ious) < 0.9
    assert LovaszLoss(IGNORE)(logits, target).item() == pytest.approx(1 - sum(ious) / 4, abs=1e-6)


def test_lovasz_rejects_an_unknown_class_choice():
    with pytest.raises(ValueError, match="present"):
        LovaszLoss(classes="some")


# ------------------------------------------------------------------------------- Tversky


def test_tversky_with_equal_weights_is_dice_with_twice_the_smooth():
    for name, logits, target, smooth in dice_cases():
        ours = logits.detach().clone().requires_grad_(True)
        reference = logits.detach().clone().requires_grad_(True)
        value = TverskyLoss(IGNORE, alpha=0.5, beta=0.5, smooth=smooth / 2)(ours, target)
        expected = DiceLoss(IGNORE, smooth=smooth)(reference, target)
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6, msg=name)
        value.backward()
        expected.backward()
        torch.testing.assert_close(ours.grad, reference.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_tversky_of_a_tiny_example_is_its_hand_computed_value():
    # Class 1 (probabilities .8 .4 .1, truth 1 1 0): TP 1.2, FP .1, FN .2 + .6 = .8;
    # class 0 (.2 .6 .9, truth 0 0 1): TP .9, FP .8, FN .1. alpha .3 on FP, beta .7 on FN, no smoothing.
    logits, target = probs_logits([[0.2, 0.6, 0.9], [0.8, 0.4, 0.1]]), torch.tensor([[[1, 1, 0]]])
    index1 = 1.2 / (1.2 + 0.3 * 0.1 + 0.7 * 0.8)  # 1.2 / 1.79
    index0 = 0.9 / (0.9 + 0.3 * 0.8 + 0.7 * 0.1)  # 0.9 / 1.21
    plain = TverskyLoss(IGNORE, alpha=0.3, beta=0.7, smooth=0.0)(logits, target)
    assert plain.item() == pytest.approx(1 - (index0 + index1) / 2, abs=1e-6)  # 0.292903...
    assert plain.item() == pytest.approx(0.2929034, abs=1e-6)
    focal = TverskyLoss(IGNORE, alpha=0.3, beta=0.7, gamma=2.0, smooth=0.0)(logits, target)
    assert focal.item() == pytest.approx(((1 - index0) ** 2 + (1 - index1) ** 2) / 2, abs=1e-6)
    # Swapping alpha and beta punishes class 1's false negatives less: a higher index, a lower loss.
    swapped = TverskyLoss(IGNORE, alpha=0.7, beta=0.3, smooth=0.0)(logits, target)
    assert swapped.item() == pytest.approx(1 - (0.9 / (0.9 + 0.56 + 0.03) + 1.2 / (1.2 + 0.07 + 0.24)) / 2, abs=1e-6)
    # An ignored pixel, however wrong, changes nothing.
    logits4 = probs_logits([[0.2, 0.6, 0.9, 0.99], [0.8, 0.4, 0.1, 0.01]])
    value4 = TverskyLoss(IGNORE, alpha=0.3, beta=0.7, smooth=0.0)(logits4, torch.tensor([[[1, 1, 0, IGNORE]]]))
    assert value4.item() == pytest.approx(plain.item(), abs=1e-6)


# ------------------------------------------------------------------------------- OHEM cross-entropy

# The probability of the true class of six pixels: the logits of a 2-class, 1 x 2 x 3 batch are built from them.
P_TRUE = [0.95, 0.6, 0.3, 0.8, 0.65, 0.1]
OHEM_TARGET = torch.tensor([[[1, 0, 1], [0, 1, 0]]])


def ohem_logits(p_true=P_TRUE, target=OHEM_TARGET):
    p = torch.tensor(p_true).view(1, 2, 3)
    p1 = torch.where(target == 1, p, 1 - p)
    return torch.stack([1 - p1, p1], dim=1).log()


def mean_nll(probabilities, weights=None):
    weights = weights or [1.0] * len(probabilities)
    return sum(-w * math.log(p) for p, w in zip(probabilities, weights)) / sum(weights)


def test_ohem_keeps_exactly_the_pixels_below_the_threshold():
    logits = ohem_logits()
    loss = OhemCrossEntropyLoss(IGNORE, thresh=0.7, min_kept=0)
    kept = loss.hard_pixels(logits, OHEM_TARGET)
    assert kept.flatten().tolist() == [p < 0.7 for p in P_TRUE]
    assert loss(logits, OHEM_TARGET).item() == pytest.approx(mean_nll([0.6, 0.3, 0.65, 0.1]), rel=1e-6)
    # min_kept below the number under the threshold changes nothing.
    assert OhemCrossEntropyLoss(IGNORE, thresh=0.7, min_kept=3)(logits, OHEM_TARGET).item() == pytest.approx(
        loss(logits, OHEM_TARGET).item()
    )


def test_ohem_keeps_the_min_kept_hardest_when_too_few_are_below_the_threshold():
    logits = ohem_logits()
    loss = OhemCrossEntropyLoss(IGNORE, thresh=0.5, min_kept=5)  # only .3 and .1 are below .5
    assert loss.hard_pixels(logits, OHEM_TARGET).flatten().tolist() == [False, True, True, True, True, True]
    assert loss(logits, OHEM_TARGET).item() == pytest.approx(mean_nll([0.6, 0.3, 0.8, 0.65, 0.1]), rel=1e-6)
    # More than the batch holds: every pixel, plain cross-entropy.
    everything = OhemCrossEntropyLoss(IGNORE, thresh=0.0, min_kept=100)(logits, OHEM_TARGET)
    assert everything.item() == pytest.approx(mean_nll(P_TRUE), rel=1e-6)


def test_ohem_weights_the_mean_of_the_kept_pixels_by_class():
    # Kept (below .7): .6 (class 0), .3 (class 1), .65 (class 1), .1 (class 0); weights 2 for class 0, .5 for class 1.
    loss = OhemCrossEntropyLoss(IGNORE, thresh=0.7, min_kept=0, class_weights=[2.0, 0.5])
    expected = mean_nll([0.6, 0.3, 0.65, 0.1], [2.0, 0.5, 0.5, 2.0])
    assert loss(ohem_logits(), OHEM_TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_ohem_never_keeps_ignored_pixels():
    target = OHEM_TARGET.clone()
    target[0, 1, 2] = IGNORE  # the hardest pixel (.1)
    loss = OhemCrossEntropyLoss(IGNORE, thresh=0.7, min_kept=0)
    assert loss(ohem_logits(), target).item() == pytest.approx(mean_nll([0.6, 0.3, 0.65]), rel=1e-6)
    hardest = OhemCrossEntropyLoss(IGNORE, thresh=0.0, min_kept=2)
    assert hardest.hard_pixels(ohem_logits(), target).flatten().tolist() == [False, True, True, False, False, False]


def ohem_hrnet_reference(logits, target, thresh, min_kept):
    """HRNet's OhemCrossEntropy (its `forward` for one output), by boolean indexing and sorting."""
    pixel_losses = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none").view(-1)
    mask = target.view(-1) != IGNORE
    p_true = logits.softmax(1).gather(1, torch.where(target == IGNORE, 0, target).unsqueeze(1)).view(-1)
    p_sorted, order = p_true[mask].sort()
    threshold = max(p_sorted[min(min_kept, p_sorted.numel() - 1)].item(), thresh)
    return pixel_losses[mask][order][p_sorted < threshold].mean()


@pytest.mark.parametrize("thresh,min_kept", [(0.7, 10), (0.7, 150), (0.3, 40), (0.9, 0)])
def test_ohem_equals_hrnets_definition_without_ties(thresh, min_kept):
    logits, target = batch()  # 198 pixels, 33 ignored
    value = OhemCrossEntropyLoss(IGNORE, thresh=thresh, min_kept=min_kept)(logits, target)
    assert value.item() == pytest.approx(ohem_hrnet_reference(logits, target, thresh, min_kept).item(), rel=1e-6)


def test_ohem_keeping_every_pixel_is_cross_entropy():
    logits, target = batch()
    weights = [0.1, 1.0, 2.0, 3.0]
    value = OhemCrossEntropyLoss(IGNORE, thresh=1.1, min_kept=0, class_weights=weights)(logits, target)
    torch.testing.assert_close(value, CrossEntropyLoss(IGNORE, class_weights=weights)(logits, target))


# ------------------------------------------------------------------------------- what every new loss shares


@pytest.mark.parametrize("name", list(NEW_LOSSES))
def test_new_losses_ignore_ignored_pixels_and_have_finite_gradients(name):
    criterion = NEW_LOSSES[name]
    logits, target = batch()
    ours = logits.clone().requires_grad_(True)
    value = criterion(ours, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(ours.grad).all() and ours.grad.abs().sum() > 0
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert (ours.grad[ignored] == 0).all()
    scrambled = torch.where(ignored, torch.randn_like(logits) * 10, logits)  # anything where the mask says ignore
    assert criterion(scrambled, target).item() == pytest.approx(value.item(), rel=1e-6)


@pytest.mark.parametrize("name", list(NEW_LOSSES))
def test_new_losses_read_no_tensor_on_the_host(monkeypatch, name):
    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor was read on the host")

    logits, target = batch()
    for method in ("__bool__", "item", "tolist", "__float__", "__int__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, method, refuse)
    NEW_LOSSES[name](logits, target)
    NEW_LOSSES[name](logits, torch.full_like(target, IGNORE))


@pytest.mark.parametrize("name", list(NEW_LOSSES))
def test_new_losses_fall_when_a_tiny_model_overfits_one_batch(name):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16)
    target = (images[:, 0] > 0.5).long() + (images[:, 1] > 0.7).long() + (images[:, 2] > 0.8).long()
    target[:, :2] = IGNORE
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        value = NEW_LOSSES[name](model(images), target)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert losses[-1] < 0.85 * losses[0], losses  # 0.63 to 0.76 of the first value after 20 steps (seed 0)
