"""Augmentation: image and mask move together, masks keep their ids, padding is ignored, workers differ."""

import os
import subprocess
import sys
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from conftest import compose_config
from helpers.fake_data import blocks, folder_overrides, image_for, save
from segkit.data.transforms import CatMaxRatioCrop, SeededPipeline


def test_cat_max_ratio_crop_avoids_crops_of_one_class():
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[60:, 60:] = 1  # class 1 fills one corner: most 40x40 crops are all background
    image = np.zeros((100, 100, 3), dtype=np.uint8)

    def balanced_share(transform) -> float:
        pipeline = A.Compose([transform], seed=0)
        good = 0
        for _ in range(200):
            crop = pipeline(image=image, mask=mask)["mask"]
            counts = np.bincount(crop.ravel(), minlength=2)
            good += counts.min() > 0 and counts.max() / counts.sum() < 0.75
        return good / 200

    plain = balanced_share(A.RandomCrop(40, 40))
    guarded = balanced_share(CatMaxRatioCrop(40, 40, cat_max_ratio=0.75, ignore_index=255))
    assert plain < 0.2 and guarded > 0.8


def test_crop_pads_masks_with_ignore_index():
    crop = CatMaxRatioCrop(32, 32, cat_max_ratio=1.0, pad_if_needed=True, fill=0, fill_mask=255)
    out = A.Compose([crop], seed=0)(image=np.full((20, 20, 3), 9, np.uint8), mask=np.ones((20, 20), np.uint8))
    assert out["image"].shape == (32, 32, 3) and out["mask"].shape == (32, 32)
    assert set(np.unique(out["mask"])) == {1, 255} and (out["mask"] == 1).sum() == 400
    assert (out["image"][out["mask"] == 255] == 0).all()


def test_default_pipeline_keeps_mask_ids_and_moves_them_with_the_image(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        mask = blocks(rng, size=(48, 64), values=(0, 1, 2))
        save(tmp_path / f"d/images/{i}.png", image_for(mask, rng))
        save(tmp_path / f"d/masks/{i}.png", mask)
    cfg = compose_config(
        "train",
        folder_overrides(tmp_path / "d", "data.crop_size=[40,40]"),
        tmp_path / "run",
    )
    dataset = instantiate(cfg.data).make_dataset("train")
    for _ in range(3):
        for i in range(len(dataset)):
            item = dataset[i]
            assert item["image"].shape == (3, 40, 40) and item["mask"].shape == (40, 40)
            mask = item["mask"]
            assert set(mask.unique().tolist()) <= {0, 1, 2, 255}  # nearest neighbour: no blended ids
            # image_for encodes the class in brightness (40 per class + <20 noise): pixels still match their ids
            # away from edges, whatever scale, crop, flip and jitter did.
            grey = item["image"].mean(0) * 255
            inner = (mask == 2) & (torch.nn.functional.max_pool2d((mask != 2)[None, None].float(), 5, 1, 2)[0, 0] == 0)
            if inner.any():
                assert grey[inner].mean() > 55


class Crops(torch.utils.data.Dataset):
    """The same image every time: only the pipeline's randomness differs between items."""

    def __init__(self):
        self.transform = SeededPipeline(A.Compose([A.RandomCrop(8, 8)]))
        self.image = np.arange(64 * 64 * 3, dtype=np.float32).reshape(64, 64, 3)

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return torch.tensor(float(self.transform(image=self.image)["image"][0, 0, 0]))


def _epoch(loader) -> list[float]:
    return [float(x) for batch in loader for x in batch]


def test_workers_and_epochs_draw_different_augmentations_reproducibly():
    torch.manual_seed(0)
    loader = DataLoader(Crops(), batch_size=1, num_workers=2)
    first, second = _epoch(loader), _epoch(loader)
    assert first[0] != first[1]  # items 0 and 1 come from different workers
    assert first != second  # a new epoch, new crops
    torch.manual_seed(0)
    assert _epoch(DataLoader(Crops(), batch_size=1, num_workers=2)) == first


AUGMENT = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf/augment").glob("*.yaml"))


@pytest.mark.parametrize("augment", AUGMENT)
def test_every_augment_option_runs_on_real_files(tmp_path, augment):
    rng = np.random.default_rng(1)
    mask = blocks(rng, size=(48, 64))
    save(tmp_path / "d/images/0.png", image_for(mask, rng))
    save(tmp_path / "d/masks/0.png", mask)
    cfg = compose_config(
        "train",
        folder_overrides(tmp_path / "d", f"augment={augment}", "data.crop_size=[32,40]"),
        tmp_path / "run",
    )
    item = instantiate(cfg.data).make_dataset("train")[0]
    expected = (48, 64) if augment == "none" else (32, 40)
    assert item["image"].shape == (3, *expected) and item["mask"].shape == expected


def test_importing_the_augmentations_asks_no_server_for_updates():
    """Albumentations looks for a newer release of itself on pypi.org when imported, unless told not to."""
    code = (
        "import socket; attempts = [];"
        "socket.getaddrinfo = lambda host, *a, **k: attempts.append(host) or (_ for _ in ()).throw(OSError('no'));"
        "import segkit.data.transforms; print(attempts)"
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]
