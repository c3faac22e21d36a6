"""Every layout config reads a small dataset of its kind, written here, to the class ids the files mean."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import compose_config
from helpers.fake_data import MEMBRANE, THREE_CLASSES, VOC_PALETTE, blocks, folder_overrides, image_for, save
from segkit.data.files import DataError


def build(tmp_path: Path, *overrides: str):
    cfg = compose_config("train", [*overrides, "data.num_workers=0"], tmp_path / "run")
    return instantiate(cfg.data)


def raw_items(datamodule, split: str) -> dict[str, dict]:
    """name -> item, read without augmentation."""
    dataset = datamodule.make_dataset(split, augment=False)
    return {item["name"]: item for item in (dataset[i] for i in range(len(dataset)))}


def test_folder_ratio_split_is_a_seeded_partition_over_sub_folders(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    for i in range(10):
        key = f"{'ab'[i % 2]}/slice_{i}"
        mask = blocks(rng)
        save(tmp_path / "data/images" / f"{key}.png", image_for(mask, rng))
        save(tmp_path / "data/masks" / f"{key}.png", mask)
        written[key] = mask
    common = ["data=folder", f"data.root={tmp_path / 'data'}", "data.splits={train:0.6,val:0.2,test:0.2}"]
    dm = build(tmp_path, *common, *THREE_CLASSES)
    splits = {s: raw_items(dm, s) for s in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [6, 2, 2]
    assert set().union(*splits.values()) == set(written)  # a partition: every key once
    for items in splits.values():
        for name, item in items.items():
            assert torch.equal(item["mask"], torch.from_numpy(written[name]).long())
            assert item["image"].shape == (3, 24, 32) and item["image"].dtype == torch.float32
            assert 0 <= item["image"].min() and item["image"].max() <= 1
    again = build(tmp_path, *common, *THREE_CLASSES)
    assert set(raw_items(again, "val")) == set(splits["val"])
    other_seed = build(tmp_path, *common, *THREE_CLASSES, "data.split_seed=1")
    assert set(raw_items(other_seed, "train")) != set(splits["train"])


@pytest.mark.skipif(not MEMBRANE.is_dir(), reason="needs ../shared/datasets/isbi2012-membrane")
def test_folder_reads_the_membrane_set_as_distributed(tmp_path):
    dm = build(
        tmp_path,
        "data=folder",
        f"data.root={MEMBRANE}",
        "data.image_dir=image",
        "data.mask_dir=label",
        "data.in_channels=1",
        "data.mask_encoding=values",
        "data.mask_values=[0,255]",
        "data.verify=full",
    )
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 24 and len(dm.datasets["val"]) == 6
    item = dm.make_dataset("val", augment=False)[0]
    stored = np.asarray(Image.open(MEMBRANE / "label" / f"{item['name']}.png"))
    assert item["image"].shape == (1, 512, 512)
    assert torch.equal(item["mask"], torch.from_numpy((stored == 255).astype(np.int64)))


def test_folder_split_by_folders_with_suffixes_and_binary_values(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("training", 3), ("validation", 2)):
        for i in range(n):
            mask = blocks(rng, values=(0, 255))
            save(tmp_path / f"d/{split}/img/{i}.jpg", image_for(mask, rng))
            save(tmp_path / f"d/{split}/gt/{i}_mask.png", mask)
    dm = build(
        tmp_path,
        "data=folder",
        f"data.root={tmp_path / 'd'}",
        "data.split_by=folders",
        "data.image_dir='{split}/img'",  # a template (quoted: braces mean a dict on Hydra's command line)
        "data.mask_dir='{split}/gt'",
        "data.mask_suffix=_mask.png",
        "data.splits={train:training,val:validation}",
        "data.mask_encoding=values",
        "data.mask_values=[0,255]",
    )
    train, val = raw_items(dm, "train"), raw_items(dm, "val")
    assert sorted(train) == ["0", "1", "2"] and sorted(val) == ["0", "1"]
    assert set(train["0"]["mask"].unique().tolist()) == {0, 1}


def write_voc(root: Path, ids: list[str], mask_dir: str = "SegmentationClass", palette=VOC_PALETTE) -> dict:
    rng = np.random.default_rng(2)
    masks = {}
    for name in ids:
        mask = blocks(rng, values=(0, 1, 2, 3))
        mask[0, :] = 255  # VOC's object borders
        save(root / "JPEGImages" / f"{name}.jpg", image_for(mask, rng))
        save(root / mask_dir / f"{name}.png", mask, palette=palette)
        masks[name] = mask
    return masks


def test_voc_palette_pngs_give_class_ids_and_borders_stay_ignored(tmp_path):
    root = tmp_path / "VOC2012"
    masks = write_voc(root, ["2007_000032", "2007_000039", "2007_000063"])
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n2007_000039\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000063\n")
    dm = build(tmp_path, "data=voc", f"data.root={root}", "data.crop_size=[32,32]", "data.batch_size=2")
    items = raw_items(dm, "train") | raw_items(dm, "val")
    for name, item in items.items():
        assert torch.equal(item["mask"], torch.from_numpy(masks[name]).long())  # indices, not colours
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 32, 32)
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 3, 255}


def test_voc_aug_reads_sbd_masks_and_the_trainaug_list(tmp_path):
    root = tmp_path / "VOC2012"
    masks = write_voc(root, ["2008_000002", "2008_000003"], mask_dir="SegmentationClassAug", palette=None)
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/trainaug.txt").write_text("2008_000002\n2008_000003\n")
    dm = build(tmp_path, "data=voc_aug", f"data.root={root}")
    items = raw_items(dm, "train")
    assert sorted(items) == ["2008_000002", "2008_000003"]
    assert torch.equal(items["2008_000003"]["mask"], torch.from_numpy(masks["2008_000003"]).long())


@pytest.mark.parametrize("config", ["cityscapes", "cityscapes_trainids"])
def test_cityscapes_label_ids_become_train_ids(tmp_path, config):
    rng = np.random.default_rng(3)
    label_ids = np.array([[7, 26], [0, 33]], dtype=np.uint8).repeat(8, 0).repeat(8, 1)  # road, car, void, bicycle
    train_ids = np.array([[0, 13], [255, 18]], dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    for split in ("train", "val"):
        for city in ("aachen", "bremen"):
            stem = f"{city}_000000_000019"
            save(tmp_path / f"cs/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", image_for(label_ids, rng))
            save(tmp_path / f"cs/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png", label_ids)
            save(tmp_path / f"cs/gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png", train_ids)
            save(tmp_path / f"cs/gtFine/{split}/{city}/{stem}_gtFine_color.png", image_for(label_ids, rng))
    dm = build(tmp_path, f"data={config}", f"data.root={tmp_path / 'cs'}")
    items = raw_items(dm, "train")
    assert sorted(items) == ["aachen/aachen_000000_000019", "bremen/bremen_000000_000019"]
    for item in items.values():
        assert torch.equal(item["mask"], torch.from_numpy(train_ids).long())
    assert len(raw_items(dm, "val")) == 2


def test_ade20k_reduces_the_zero_label(tmp_path):
    rng = np.random.default_rng(4)
    stored = np.array([[0, 1], [150, 12]], dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    for split, name in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        save(tmp_path / f"ade/images/{split}/{name}.jpg", image_for(stored, rng))
        save(tmp_path / f"ade/annotations/{split}/{name}.png", stored)
    dm = build(tmp_path, "data=ade20k", f"data.root={tmp_path / 'ade'}")
    item = raw_items(dm, "val")["ADE_val_00000001"]
    expected = np.array([[255, 0], [149, 11]]).repeat(8, 0).repeat(8, 1)
    assert torch.equal(item["mask"], torch.from_numpy(expected))
    assert dm.num_classes == len(dm.class_names) == len(dm.palette) == 150


def test_camvid_lists_with_segnet_paths(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "CamVid"
    lines = {"train": [], "val": [], "test": []}
    for split in lines:
        for i in range(2):
            mask = np.arange(12, dtype=np.uint8).repeat(4)[None].repeat(8, 0)  # ids 0..10 and 11 = unlabelled
            save(root / split / f"{split}_{i}.png", image_for(mask, rng))
            save(root / f"{split}annot" / f"{split}_{i}.png", mask)
            lines[split].append(f"/SegNet/CamVid/{split}/{split}_{i}.png /SegNet/CamVid/{split}annot/{split}_{i}.png")
        (root / f"{split}.txt").write_text("\n".join(lines[split]) + "\n")
    dm = build(tmp_path, "data=camvid", f"data.root={root}")
    item = raw_items(dm, "test")["test/test_1"]
    expected = np.arange(12).repeat(4)[None].repeat(8, 0)
    expected[expected == 11] = 255
    assert torch.equal(item["mask"], torch.from_numpy(expected))


def test_a_parent_folder_as_root_names_the_folder_that_holds_the_lists(tmp_path):
    """data.root=<parent of CamVid/>: the message names <root>/CamVid/train.txt and the fix."""
    root = tmp_path / "data" / "CamVid"
    for split in ("train", "val", "test"):
        mask = np.zeros((8, 12), np.uint8)
        save(root / split / "a.png", image_for(mask, np.random.default_rng(0)))
        save(root / f"{split}annot" / "a.png", mask)
        (root / f"{split}.txt").write_text(f"/SegNet/CamVid/{split}/a.png /SegNet/CamVid/{split}annot/a.png\n")
    dm = build(tmp_path, "data=camvid", f"data.root={root.parent}")
    with pytest.raises(DataError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert f"{root.parent / 'train.txt'}: the train list file does not exist" in message
    assert f"Found {root / 'train.txt'}. Fix: data.root={root}." in message
    build(tmp_path, "data=camvid", f"data.root={root}").setup("fit")  # the folder it names works


def test_rgb_colour_masks_map_through_the_palette(tmp_path):
    rng = np.random.default_rng(6)
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=np.uint8)
    mask = blocks(rng)
    save(tmp_path / "d/images/0.png", image_for(mask, rng))
    save(tmp_path / "d/masks/0.png", palette[mask])
    bad = palette[mask].copy()
    bad[0, 0] = (1, 2, 3)
    save(tmp_path / "d/images/1.png", image_for(mask, rng))
    save(tmp_path / "d/masks/1.png", bad)
    dm = build(tmp_path, *folder_overrides(tmp_path / "d", "data.mask_encoding=rgb"))
    dataset = dm.make_dataset("train", augment=False)
    assert torch.equal(dataset[0]["mask"], torch.from_numpy(mask).long())
    with pytest.raises(DataError, match=r"1\.png: mask values \{\(1, 2, 3\)\}"):
        dataset[1]


def test_sixteen_bit_and_multiband_tiffs(tmp_path):
    rng = np.random.default_rng(7)
    mask = blocks(rng)
    bands = rng.integers(0, 4096, (24, 32, 5)).astype(np.uint16)
    (tmp_path / "d/images").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "d/images/hwc.tif", bands)
    tifffile.imwrite(tmp_path / "d/images/planar.tif", np.moveaxis(bands, -1, 0), planarconfig="separate")
    for name in ("hwc", "planar"):
        save(tmp_path / f"d/masks/{name}.png", mask)
    dm = build(tmp_path, *folder_overrides(tmp_path / "d", "data.in_channels=5", "data.image_max_value=4095"))
    items = raw_items(dm, "train")
    expected = torch.from_numpy(np.moveaxis(bands, -1, 0).astype(np.float32) / 4095)
    for item in items.values():
        assert torch.allclose(item["image"], expected)
    # Without image_max_value, 16-bit data is scaled by its dtype's range.
    grey = rng.integers(0, 65536, (24, 32)).astype(np.uint16)
    (tmp_path / "g/images").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "g/images/0.tif", grey)
    save(tmp_path / "g/masks/0.png", mask)
    dm = build(tmp_path, *folder_overrides(tmp_path / "g", "data.in_channels=1"))
    image = raw_items(dm, "train")["0"]["image"]
    assert torch.allclose(image, torch.from_numpy(grey.astype(np.float32) / 65535)[None])


def test_grey_png_feeds_a_three_channel_model_and_extra_bands_are_refused(tmp_path):
    rng = np.random.default_rng(8)
    mask = blocks(rng)
    save(tmp_path / "d/images/grey.png", image_for(mask, rng, channels=1))
    save(tmp_path / "d/masks/grey.png", mask)
    dm = build(tmp_path, *folder_overrides(tmp_path / "d"))
    image = raw_items(dm, "train")["grey"]["image"]
    assert image.shape == (3, 24, 32) and torch.equal(image[0], image[2])
    tifffile.imwrite(tmp_path / "d/images/four.tif", rng.integers(0, 255, (24, 32, 4)).astype(np.uint8))
    save(tmp_path / "d/masks/four.png", mask)
    dm = build(tmp_path, *folder_overrides(tmp_path / "d"))
    dataset = dm.make_dataset("train", augment=False)
    with pytest.raises(DataError, match=r"four\.tif: has 4 channel\(s\) but data.in_channels is 3.*in_channels=4"):
        dataset[[s.name for s in dataset.samples].index("four")]
