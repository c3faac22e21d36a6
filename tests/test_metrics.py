import math

import numpy as np
import pytest
import torch

from segkit.training.metrics import confusion_metric, named_scores, scores_from_confusion

IGNORE = 255


def hand_confusion(preds, target, num_classes):
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, t in zip(preds.ravel().tolist(), target.ravel().tolist()):
        if t != IGNORE:
            cm[t, p] += 1
    return cm


def test_scores_equal_a_hand_computed_confusion_matrix_with_ignore_index():
    rng = np.random.default_rng(3)
    num_classes = 4
    metric = confusion_metric(num_classes, IGNORE)
    all_preds, all_targets = [], []
    for _ in range(3):  # accumulated over batches: dataset-level, not a mean of per-batch scores
        preds = rng.integers(0, num_classes, (2, 7, 9))
        target = rng.integers(0, num_classes, (2, 7, 9))
        target[rng.random(target.shape) < 0.2] = IGNORE
        metric.update(torch.from_numpy(preds), torch.from_numpy(target))
        all_preds.append(preds)
        all_targets.append(target)
    cm = hand_confusion(np.concatenate(all_preds), np.concatenate(all_targets), num_classes)
    assert np.array_equal(metric.compute().numpy(), cm)

    scores = scores_from_confusion(metric.compute())
    tp = np.diag(cm)
    iou = tp / (cm.sum(0) + cm.sum(1) - tp)
    dice = 2 * tp / (cm.sum(0) + cm.sum(1))
    assert np.allclose(scores["IoU"].numpy(), iou)
    assert np.allclose(scores["Dice"].numpy(), dice)
    assert math.isclose(scores["mIoU"].item(), iou.mean())
    assert math.isclose(scores["mDice"].item(), dice.mean())
    assert math.isclose(scores["pixel_acc"].item(), tp.sum() / cm.sum())


def test_class_absent_from_truth_and_prediction_is_nan_and_left_out_of_the_mean():
    preds = torch.tensor([[0, 0, 1, 1]])
    target = torch.tensor([[0, 1, 1, IGNORE]])
    metric = confusion_metric(3, IGNORE)
    metric.update(preds, target)
    scores = scores_from_confusion(metric.compute())
    assert math.isnan(scores["IoU"][2].item())
    # class 0: tp 1, fp 1 -> 1/2; class 1: tp 1, fn 1, fp 0 -> 1/2 (the ignored pixel's prediction is not counted)
    assert math.isclose(scores["mIoU"].item(), 0.5)
    flat = named_scores("val", scores, ["bg", "a", "b"])
    assert math.isclose(flat["val/IoU/a"], 0.5) and math.isnan(flat["val/IoU/b"])
    assert set(flat) >= {"val/mIoU", "val/mDice", "val/pixel_acc", "val/Dice/bg"}


def test_binary_task():
    metric = confusion_metric(2, IGNORE)
    metric.update(torch.tensor([[1, 1, 0, 0]]), torch.tensor([[1, 0, 0, 0]]))
    scores = scores_from_confusion(metric.compute())
    assert np.allclose(scores["IoU"].numpy(), [2 / 3, 1 / 2])
    assert math.isclose(scores["pixel_acc"].item(), 0.75)


@pytest.mark.parametrize("ignore_index", [255, 2, None])
def test_confusion_matrix_equals_torchmetrics(ignore_index):
    from torchmetrics.classification import MulticlassConfusionMatrix

    generator = torch.Generator().manual_seed(0)
    reference = MulticlassConfusionMatrix(4, ignore_index=ignore_index)
    ours = confusion_metric(4, ignore_index)
    for _ in range(3):
        preds = torch.randint(0, 4, (2, 9, 13), generator=generator)
        target = torch.randint(0, 4, (2, 9, 13), generator=generator)
        if ignore_index == 255:
            target[:, :3] = 255
        reference.update(preds, target)
        ours.update(preds, target)
    assert torch.equal(ours.compute(), reference.compute())
