"""Every loss in the sigmoid tasks (data.task=binary: one logit channel against class ids 0/1; multilabel: a logit
per label against (B, C, H, W) 0/1 masks): values against torch's, torchvision's or a brute-force reference on small
tensors, ignored pixels counting for nothing, float32 under bf16 autocast, no host sync, a tiny model overfitting."""

import pytest
import torch
import torch.nn.functional as F
from test_losses import lovasz_by_level_sets
from torchvision.ops import sigmoid_focal_loss

from segkit.training.losses import (
    BinaryCrossEntropyLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszLoss,
    OhemCrossEntropyLoss,
    TverskyLoss,
    WeightedSum,
)

IGNORE = 255
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster


def binary_batch(h=9, w=11):
    torch.manual_seed(0)
    logits = torch.randn(2, 1, h, w) * 2
    target = torch.randint(0, 2, (2, h, w))
    target[0, :3] = IGNORE
    return logits, target


def multilabel_batch(labels=3, h=9, w=11):
    torch.manual_seed(1)
    logits = torch.randn(2, labels, h, w) * 2
    target = torch.randint(0, 2, (2, labels, h, w))
    target[0, 1, :3] = IGNORE  # one label unknown on some pixels, the others known there
    target[1, :, -2:] = IGNORE
    return logits, target


def batch(task):
    return binary_batch() if task == "binary" else multilabel_batch()


def as_planes(logits, target):
    """(B, C, H, W) logits and targets, whatever the task."""
    return logits, target.unsqueeze(1) if target.dim() == 3 else target


def losses_for(task):
    return {
        "ce": CrossEntropyLoss(IGNORE, task=task),
        "bce_pos_weight": BinaryCrossEntropyLoss(IGNORE, pos_weight=3.0, task=task),
        "dice": DiceLoss(IGNORE, task=task),
        "focal": FocalLoss(IGNORE, task=task),
        "lovasz": LovaszLoss(IGNORE, task=task),
        "lovasz_all_per_image": LovaszLoss(IGNORE, classes="all", per_image=True, task=task),
        "tversky": TverskyLoss(IGNORE, task=task),
        "ohem": OhemCrossEntropyLoss(IGNORE, thresh=0.7, min_kept=20, task=task),
        "bce_dice": WeightedSum(
            {"bce": BinaryCrossEntropyLoss(IGNORE, task=task), "dice": DiceLoss(IGNORE, task=task)}
        ),
    }


CASES = [(task, name) for task in ("binary", "multilabel") for name in losses_for(task)]


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_bce_equals_torchs_over_the_known_pixels_with_weights(task):
    logits, target = batch(task)
    planes, truth = as_planes(logits, target)
    valid = truth != IGNORE
    expected = F.binary_cross_entropy_with_logits(planes[valid], truth[valid].float())
    assert BinaryCrossEntropyLoss(IGNORE, task=task)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert CrossEntropyLoss(IGNORE, task=task)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # pos_weight as torch's; class weights by true class (binary) or by label (multilabel), normalised like torch's CE
    pos_weight = torch.full((planes.shape[1], 1, 1), 2.5)
    per_element = F.binary_cross_entropy_with_logits(
        planes, truth.clamp(max=1).float(), pos_weight=pos_weight, reduction="none"
    )
    if task == "binary":
        class_weights = [0.4, 1.6]
        weights = torch.where(truth == 1, 1.6, 0.4)
    else:
        class_weights = [0.5, 1.0, 2.0]
        weights = torch.tensor(class_weights).view(1, 3, 1, 1).expand_as(planes)
    expected = (per_element * weights)[valid].sum() / weights[valid].sum()
    loss = BinaryCrossEntropyLoss(IGNORE, class_weights=class_weights, pos_weight=2.5, task=task)
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_focal_equals_torchvisions_sigmoid_focal_loss(task):
    logits, target = batch(task)
    planes, truth = as_planes(logits, target)
    valid = truth != IGNORE
    for gamma, alpha in [(2.0, 0.25), (1.0, 0.8), (0.0, 0.5)]:
        reference = sigmoid_focal_loss(planes[valid], truth[valid].float(), alpha=alpha, gamma=gamma, reduction="mean")
        class_alpha = [1 - alpha, alpha] if task == "binary" else None
        ours = FocalLoss(IGNORE, gamma=gamma, alpha=class_alpha, task=task)(logits, target)
        if task == "multilabel":  # torchvision's alpha weighs positives; ours weighs labels: compare without it
            reference = sigmoid_focal_loss(planes[valid], truth[valid].float(), alpha=-1, gamma=gamma, reduction="mean")
        assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    gamma0 = FocalLoss(IGNORE, gamma=0.0, task=task)(logits, target)
    assert gamma0.item() == pytest.approx(BinaryCrossEntropyLoss(IGNORE, task=task)(logits, target).item(), rel=1e-6)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_dice_and_tversky_are_the_per_channel_formulas_over_known_pixels(task):
    logits, target = batch(task)
    planes, truth = as_planes(logits, target)
    probs, valid = planes.sigmoid(), (truth != IGNORE).float()
    fg = (truth == 1).float()
    dims = (0, 2, 3)
    tp, p_sum, g_sum = (probs * fg * valid).sum(dims), (probs * valid).sum(dims), (fg * valid).sum(dims)
    dice = (2 * tp + 1) / (p_sum + g_sum + 1)  # every channel has a positive pixel here: all present
    assert (g_sum > 0).all()
    assert DiceLoss(IGNORE, task=task)(logits, target).item() == pytest.approx(1 - dice.mean().item(), rel=1e-5)
    fp, fn = p_sum - tp, g_sum - tp
    tversky = (tp + 1) / (tp + 0.3 * fp + 0.7 * fn + 1)
    value = TverskyLoss(IGNORE, alpha=0.3, beta=0.7, task=task)(logits, target).item()
    assert value == pytest.approx(1 - tversky.mean().item(), rel=1e-5)


def test_binary_dice_of_an_image_without_positives_punishes_false_positives():
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    quiet, loud = torch.full((1, 1, 6, 6), -6.0), torch.full((1, 1, 6, 6), 2.0)
    assert DiceLoss(IGNORE, task="binary")(quiet, target) < 0.1 < DiceLoss(IGNORE, task="binary")(loud, target)


def lovasz_hinge_reference(logits, target, per_image):
    """Lovász hinge by brute force in float64: per channel (and image), the level-set integral of the Jaccard loss
    at the hinge errors max(0, 1 - s x) of the known pixels, averaged over the channels present."""
    planes, truth = as_planes(logits.double(), target)
    groups = [slice(i, i + 1) for i in range(len(truth))] if per_image else [slice(None)]
    image_losses = []
    for group in groups:
        class_losses, labelled = [], False
        for c in range(planes.shape[1]):
            valid = truth[group, c] != IGNORE
            labels, x = truth[group, c][valid].tolist(), planes[group, c][valid].tolist()
            labelled |= bool(labels)
            foreground = {i for i, label in enumerate(labels) if label == 1}
            if not foreground:
                continue
            errors = [max(0.0, 1 - (2 * label - 1) * xi) for label, xi in zip(labels, x)]
            class_losses.append(lovasz_by_level_sets(errors, foreground))
        if labelled:
            image_losses.append(sum(class_losses) / len(class_losses) if class_losses else 0.0)
    return sum(image_losses) / len(image_losses)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
@pytest.mark.parametrize("per_image", [False, True], ids=["batch", "per_image"])
def test_lovasz_hinge_equals_the_level_set_integral_by_brute_force(task, per_image):
    logits, target = batch(task)
    logits, target = logits[..., :5, :6], target[..., :5, :6]  # the brute force is slow
    ours = LovaszLoss(IGNORE, per_image=per_image, task=task)(logits, target).item()
    assert ours == pytest.approx(lovasz_hinge_reference(logits, target, per_image), rel=1e-5)


def test_lovasz_hinge_of_a_tiny_example_is_its_hand_computed_value():
    # Logits 2, -0.5, 1 against 1, 1, 0: hinge errors 1 - 2 = -1 (0), 1.5, 2; sorted 2 (bg), 1.5 (fg), 0 (fg).
    # Jaccard loss of the growing sets: 1 - 2/3, 1 - 1/3, 1 - 0/3, so 2 * 1/3 + 1.5 * (2/3 - 1/3) = 7/6.
    logits, target = torch.tensor([[[[2.0, -0.5, 1.0]]]]), torch.tensor([[[1, 1, 0]]])
    assert LovaszLoss(IGNORE, task="binary")(logits, target).item() == pytest.approx(7 / 6, abs=1e-6)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_ohem_keeping_every_element_is_bce_and_keeps_the_hardest(task):
    logits, target = batch(task)
    every = OhemCrossEntropyLoss(IGNORE, thresh=1.1, min_kept=0, task=task)(logits, target)
    assert every.item() == pytest.approx(BinaryCrossEntropyLoss(IGNORE, task=task)(logits, target).item(), rel=1e-6)
    planes, truth = as_planes(logits, target)
    valid = truth != IGNORE
    p_true = torch.where(truth == 1, planes.sigmoid(), 1 - planes.sigmoid())[valid]
    per_element = F.binary_cross_entropy_with_logits(planes[valid], truth[valid].float(), reduction="none")
    hardest = p_true.argsort()[:7]  # thresh 0: only the min_kept hardest count
    expected = per_element[hardest].mean()
    ours = OhemCrossEntropyLoss(IGNORE, thresh=0.0, min_kept=7, task=task)(logits, target)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("task,name", CASES, ids=[f"{t}-{n}" for t, n in CASES])
def test_sigmoid_losses_ignore_ignored_pixels_and_have_finite_gradients(task, name):
    criterion = losses_for(task)[name]
    logits, target = batch(task)
    ours = logits.clone().requires_grad_(True)
    value = criterion(ours, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(ours.grad).all() and ours.grad.abs().sum() > 0
    ignored = as_planes(logits, target)[1] == IGNORE
    assert (ours.grad[ignored] == 0).all()
    scrambled = torch.where(ignored, torch.randn_like(logits) * 10, logits)
    assert criterion(scrambled, target).item() == pytest.approx(value.item(), rel=1e-6)
    everything_ignored = criterion(ours, torch.full_like(target, IGNORE))
    assert everything_ignored.item() == 0.0 or name == "dice" or name.startswith("tversky")  # no NaN in any case
    assert torch.isfinite(everything_ignored)


@pytest.mark.parametrize("task,name", CASES, ids=[f"{t}-{n}" for t, n in CASES])
def test_sigmoid_losses_compute_in_float32_under_bf16_autocast_without_a_host_read(monkeypatch, task, name):
    criterion = losses_for(task)[name]
    channels = 1 if task == "binary" else 3
    head = torch.nn.Conv2d(3, channels, 1)
    _, target = batch(task)
    images = torch.rand(2, 3, *target.shape[-2:])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(images)
        loss = criterion(logits, target)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(criterion(logits.float(), target).item(), rel=1e-6)

    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor was read on the host")

    for method in ("__bool__", "item", "tolist", "__float__", "__int__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, method, refuse)
    criterion(logits.float(), target)


@pytest.mark.parametrize("task,name", CASES, ids=[f"{t}-{n}" for t, n in CASES])
def test_sigmoid_losses_fall_when_a_tiny_model_overfits_one_batch(task, name):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16)
    if task == "binary":
        target = (images[:, 0] > 0.6).long()
    else:  # labels that overlap: a pixel may have two or three
        target = torch.stack([images[:, 0] > 0.5, images[:, 1] > 0.4, images[:, 0] + images[:, 2] > 1.2], 1).long()
    target[..., :2, :] = IGNORE
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 1 if task == "binary" else 3, 1)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    criterion = losses_for(task)[name]
    losses = []
    for _ in range(20):
        value = criterion(model(images), target)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert losses[-1] < 0.85 * losses[0], losses


def test_bce_refuses_a_multiclass_task_and_names_the_fix():
    with pytest.raises(ValueError, match=r"does not apply to data.task=multiclass.*Fix: loss=ce"):
        BinaryCrossEntropyLoss(IGNORE, task="multiclass")
    with pytest.raises(ValueError, match="data.task='multi-label' is not one of"):
        DiceLoss(IGNORE, task="multi-label")


def test_a_sigmoid_loss_names_a_mask_that_does_not_fit_its_logits():
    with pytest.raises(ValueError, match="3 channels but the masks 2"):
        DiceLoss(IGNORE, task="multilabel")(torch.randn(1, 3, 4, 4), torch.zeros(1, 2, 4, 4, dtype=torch.long))
