import pytest
import torch

from segkit.data import SyntheticDataModule, SyntheticShapes

CLASSES = dict(num_classes=4, class_names=["bg", "disc", "square", "triangle"], palette=[[0, 0, 0]] * 4)


def test_synthetic_is_deterministic_for_a_seed():
    a, b, c = SyntheticShapes(4, seed=1), SyntheticShapes(4, seed=1), SyntheticShapes(4, seed=2)
    assert torch.equal(a[3]["image"], b[3]["image"]) and torch.equal(a[3]["mask"], b[3]["mask"])
    assert not torch.equal(a[3]["image"], c[3]["image"])


def test_synthetic_items_have_the_documented_form():
    ds = SyntheticShapes(64, image_size=(30, 50), in_channels=4, noise=0.2)
    item = ds[0]
    assert item["image"].shape == (4, 30, 50) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (30, 50) and item["mask"].dtype == torch.int64
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    seen = torch.cat([ds[i]["mask"].flatten() for i in range(len(ds))]).unique().tolist()
    assert seen == [0, 1, 2, 3]


def test_colour_does_not_give_the_class_away():
    """Objects of every class take colours from the same range: mean colours of classes overlap."""
    ds = SyntheticShapes(200, noise=0.0)
    means = {c: [] for c in (1, 2, 3)}
    for i in range(len(ds)):
        item = ds[i]
        for c in means:
            region = item["mask"] == c
            if region.sum() > 20:
                means[c].append(item["image"][:, region].mean().item())
    spans = [(min(v), max(v)) for v in means.values()]
    assert all(lo < 0.25 and hi > 0.5 for lo, hi in spans)


def test_splits_differ_and_loaders_batch(tmp_path):
    dm = SyntheticDataModule(num_train=10, num_val=4, num_test=4, image_size=(32, 32), batch_size=4, **CLASSES)
    dm.setup("fit")
    assert not torch.equal(dm.datasets["train"][0]["image"], dm.datasets["val"][0]["image"])
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # the last, incomplete batch is dropped: no BatchNorm batch of one
    assert batches[0]["image"].shape == (4, 3, 32, 32)


def test_class_facts_must_agree():
    with pytest.raises(ValueError, match="class_names"):
        SyntheticDataModule(num_classes=4, class_names=["bg", "disc"], palette=[[0, 0, 0]] * 4)


def test_binary_synthetic():
    ds = SyntheticShapes(16, num_classes=2)
    assert set(torch.cat([ds[i]["mask"].flatten() for i in range(16)]).unique().tolist()) == {0, 1}
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(4, num_classes=7)
