"""One verdict on data: `python check_data.py` fails exactly when training on the same data config (and the
same `test` setting) would refuse, and both say which folder, what was searched and the fix.

Every dataset here is written to tmp_path: these tests never need ../shared."""

import os
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from conftest import ROOT, compose_config, run_entry
from helpers.fake_data import THREE_CLASSES, blocks, image_for, save
from segkit.data.files import DataError
from segkit.tasks.check_data import run_check

IMAGE_PATTERN = "images/**/*{.png,.jpg,.jpeg,.tif,.tiff,.bmp}"


def write_pairs(root: Path, count: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        mask = blocks(rng)
        save(root / f"images/{i}.png", image_for(mask, rng))
        save(root / f"masks/{i}.png", mask)
    return root


def data_overrides(root: Path, *extra: str) -> list[str]:
    return [
        "data=folder",
        f"data.root={root}",
        "data.splits={train:0.5,val:0.5}",
        *THREE_CLASSES,
        "data.num_workers=0",
        *extra,
    ]


def training_refusal(tmp_path: Path, overrides: list[str], test: bool) -> str | None:
    """What training's start-up guard says (None: it accepts): the datamodule set up as train.py sets it up, the
    test stage too when `test` (whether train.py verifies it at start-up or after fitting, it refuses)."""
    cfg = compose_config("train", [*overrides, f"test={str(test).lower()}"], tmp_path / "train")
    datamodule = instantiate(cfg.data)
    datamodule.test_after_fit = bool(cfg.test)
    try:
        datamodule.setup("fit")
        if cfg.test:
            datamodule.setup("test")
    except DataError as err:
        return str(err)
    return None


def check_errors(tmp_path: Path, overrides: list[str], test: bool) -> list[dict]:
    out = run_check(compose_config("check_data", [*overrides, f"test={str(test).lower()}"], tmp_path / "check"))
    assert out["errors"] == sum(p["fatal"] for p in out["problems"])
    return [p for p in out["problems"] if p["fatal"]]


def same_verdict(tmp_path: Path, overrides: list[str], test: bool) -> tuple[list[dict], str | None]:
    """The check's errors and training's refusal, asserted to agree: each error of the check is in training's."""
    errors = check_errors(tmp_path, overrides, test)
    refusal = training_refusal(tmp_path, overrides, test)
    assert bool(errors) == (refusal is not None), (errors, refusal)
    for error in errors:
        assert error["message"] in refusal
    return errors, refusal


def test_an_empty_image_folder_beside_masks_is_refused_by_both(tmp_path):
    root = write_pairs(tmp_path / "d")
    for image in (root / "images").iterdir():
        image.unlink()
    errors, refusal = same_verdict(tmp_path, data_overrides(root), test=False)
    assert {(e["split"], e["kind"]) for e in errors} == {("train", "empty split"), ("val", "empty split")}
    for error in errors:
        assert f"no file matches {IMAGE_PATTERN} under data.root={root} " in error["message"]
        assert f"{root / 'images'} holds nothing" in error["message"] and "Fix: " in error["message"]


def test_a_ratio_that_rounds_to_no_image_is_refused_by_both(tmp_path):
    root = write_pairs(tmp_path / "d", count=3)
    errors, _ = same_verdict(tmp_path, data_overrides(root, "data.splits={train:0.9,val:0.1}"), test=False)
    (error,) = errors
    assert error["split"] == "val" and error["kind"] == "empty split"
    assert (
        f"data.splits.val=0.1 of the 3 image(s) matching {IMAGE_PATTERN} under data.root={root} rounds to no "
        f"image" in error["message"]
    )
    assert "Fix: raise data.splits.val (to at least 0.33)" in error["message"]


def test_a_missing_test_entry_is_refused_exactly_when_training_tests(tmp_path):
    root = write_pairs(tmp_path / "d")
    errors, _ = same_verdict(tmp_path, data_overrides(root), test=True)
    (error,) = errors
    assert error["split"] == "test" and "data.splits has no test entry" in error["message"]
    assert f"data.root={root}" in error["message"] and "data.splits.test=0.1" in error["message"]
    assert "or run with test=false" in error["message"]
    assert same_verdict(tmp_path, data_overrides(root), test=False) == ([], None)  # both accept


def test_problems_of_a_split_training_does_not_load_are_warnings(tmp_path):
    root = tmp_path / "d"
    for split in ("train", "val", "test"):
        write_pairs(root / split, count=2)
    (root / "test/images/1.png").write_bytes(b"not a png")
    overrides = data_overrides(
        root,
        "data.split_by=folders",
        "data.image_dir='{split}/images'",
        "data.mask_dir='{split}/masks'",
        "data.splits={train:train,val:val,test:test}",
    )
    (test_error,) = same_verdict(tmp_path, overrides, test=True)[0]
    assert test_error["split"] == "test" and test_error["kind"] == "unreadable"
    assert "test/images/1.png: cannot be read" in test_error["message"]
    assert same_verdict(tmp_path, overrides, test=False) == ([], None)


def test_a_missing_list_file_is_refused_by_both(tmp_path):
    root = write_pairs(tmp_path / "d")
    (root / "train.txt").write_text("0\n1\n2\n")
    overrides = data_overrides(root, "data.split_by=lists", "data.splits={train:train.txt,val:val.txt}")
    (error,) = same_verdict(tmp_path, overrides, test=False)[0]
    assert error["kind"] == "missing list" and error["split"] == "val"
    assert f"{root / 'val.txt'}: the val list file does not exist" in error["message"]
    assert f"relative to data.root={root}" in error["message"]
    assert "Fix: check data.root and data.splits.val" in error["message"]


@pytest.mark.parametrize("broken", ["images", "masks"])
def test_a_broken_link_is_reported_as_one_naming_its_target(tmp_path, broken):
    root = write_pairs(tmp_path / "d")
    link, target = root / broken / "3.png", tmp_path / "moved" / "3.png"
    link.unlink()
    os.symlink(target, link)
    errors, refusal = same_verdict(tmp_path, data_overrides(root), test=False)
    (error,) = errors
    assert error["kind"] == "broken link" and error["path"] == str(link)
    assert f"{link}: a broken link; its target {target} does not exist. Fix: " in error["message"]
    assert "mask with no image" not in refusal and "no mask" not in refusal


def test_a_sound_dataset_is_accepted_by_both(tmp_path):
    root = write_pairs(tmp_path / "d")
    assert same_verdict(tmp_path, data_overrides(root), test=False) == ([], None)


def test_the_check_command_exits_with_training_verdict(tmp_path, capsys, monkeypatch):
    root = write_pairs(tmp_path / "d")
    accepted = run_check(compose_config("check_data", [*data_overrides(root), "test=false"], tmp_path / "check"))
    assert accepted["errors"] == 0 and "would accept this data" in capsys.readouterr().out  # check_data.py: exit 0
    for image in (root / "images").iterdir():
        image.unlink()
    monkeypatch.setenv("COLUMNS", "250")  # the report's table as wide as its longest line
    refused = run_entry(str(ROOT / "check_data.py"), *data_overrides(root), "test=false", cwd=tmp_path)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "would stop on 2 error(s)" in refused.stdout and f"no file matches {IMAGE_PATTERN}" in refused.stdout
    assert training_refusal(tmp_path, data_overrides(root), test=False) is not None


def test_an_empty_split_at_loader_time_names_the_folder_and_pattern(tmp_path):
    """With data.verify=off nothing is checked at start-up; the loader's error still says where it looked."""
    root = write_pairs(tmp_path / "d", count=3)
    cfg = compose_config(
        "train", data_overrides(root, "data.splits={train:0.9,val:0.1}", "data.verify=off"), tmp_path / "train"
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    with pytest.raises(
        DataError,
        match=rf"The val split is empty: data.splits.val=0.1 of the 3 image\(s\) matching "
        rf"images/.* under data.root={root} rounds to no image\. Fix: ",
    ):
        datamodule.val_dataloader()
