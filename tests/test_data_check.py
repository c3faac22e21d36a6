"""Bad data fails early and by name: the check command, the start-up guard, and errors raised later.

Tests on a copy of the membrane set (or the set itself) need ../shared/datasets/isbi2012-membrane and skip without
it; tests on data they write themselves always run."""

import json
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from conftest import compose_config
from helpers.fake_data import MEMBRANE, blocks, copy_membrane, folder_overrides, image_for, save
from segkit.data.files import DataError
from segkit.tasks.check_data import check_dataset, run_check
from segkit.tasks.train import train

needs_membrane = pytest.mark.skipif(not MEMBRANE.is_dir(), reason="needs ../shared/datasets/isbi2012-membrane")


def break_copy(root: Path) -> dict[str, str]:
    """A copy of ten membrane slices with one file broken in each way; file -> the problem's kind."""
    copy_membrane(root, count=10)
    (root / "label/3.png").unlink()
    label = Image.open(root / "label/4.png")
    label.resize((500, 512), Image.NEAREST).save(root / "label/4.png")
    values = np.asarray(Image.open(root / "label/5.png")).copy()
    values[:10, :10] = 128
    Image.fromarray(values).save(root / "label/5.png")
    data = (root / "image/6.png").read_bytes()
    (root / "image/6.png").write_bytes(data[: len(data) // 2])
    (root / "image/7.png").write_bytes(b"this is not a png" * 100)
    return {
        "image/3.png": "missing mask",
        "label/4.png": "size mismatch",
        "label/5.png": "bad mask values",
        "image/6.png": "unreadable",
        "image/7.png": "unreadable",
    }


def membrane_cfg(tmp_path: Path, root: Path, *overrides: str):
    return compose_config(
        "train",
        [
            "experiment=membrane_unet",
            f"data.root={root}",
            "data.num_workers=0",
            "logger=csv",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            *overrides,
        ],
        tmp_path / "run",
    )


@needs_membrane
def test_check_names_every_broken_file_and_its_problem(tmp_path):
    broken = break_copy(tmp_path / "membrane")
    datamodule = instantiate(membrane_cfg(tmp_path, tmp_path / "membrane").data)
    reports, problems = check_dataset(datamodule, ("train", "val"), test=False)
    found = {(Path(p.path).parent.name + "/" + Path(p.path).name, p.kind) for p in problems if p.fatal}
    assert found == set(broken.items())
    for problem in problems:
        assert Path(problem.path).name in problem.message  # the message itself names the file
    assert sum(r.num_samples for r in reports.values()) == 9  # image 3 has no mask
    assert sum(r.decoded for r in reports.values()) == 9 - 4


@needs_membrane
def test_check_command_reports_and_fails_on_a_broken_copy(tmp_path):
    """What check_data.py reports and writes (its exit status: test_data_verdict.py runs the script itself)."""
    broken = break_copy(tmp_path / "membrane")
    cfg = compose_config("check_data", ["data=membrane", f"data.root={tmp_path / 'membrane'}"], tmp_path / "check")
    assert run_check(cfg)["errors"] >= len(broken)  # check_data.py exits with 1
    report = json.loads((tmp_path / "check" / "report.json").read_text())
    listed = {(Path(p["path"]).parent.name + "/" + Path(p["path"]).name, p["kind"]) for p in report["problems"]}
    assert set(broken.items()) <= listed
    assert report["splits"]["train"]["samples"] + report["splits"]["val"]["samples"] == 9
    assert "class_weights" in report


@needs_membrane
def test_check_command_on_the_membrane_set(tmp_path):
    cfg = compose_config(
        "check_data", ["data=membrane", f"data.root={MEMBRANE}", "splits=[train,val]", "test=false"], tmp_path / "check"
    )
    assert run_check(cfg)["errors"] == 0  # check_data.py exits with 0
    report_path = tmp_path / "check" / "report.json"
    report = json.loads(report_path.read_text())
    assert report["problems"] == []
    assert report["splits"]["train"]["sizes"] == {"512x512": 24} and report["splits"]["val"]["samples"] == 6
    pixels = report["splits"]["train"]["class_pixels"]
    assert pixels["membrane"] + pixels["cell"] == 24 * 512 * 512
    assert 0.15 < pixels["membrane"] / (24 * 512 * 512) < 0.3  # membranes are about a fifth of the pixels
    weights = report["class_weights"]["weights"]
    assert weights[0] > 1 > weights[1]  # the rarer class weighs more
    (weights_file,) = report_path.parent.glob("class_weights.yaml")


@needs_membrane
def test_training_stops_at_start_up_naming_every_bad_file(tmp_path):
    broken = break_copy(tmp_path / "membrane")
    cfg = membrane_cfg(tmp_path, tmp_path / "membrane")
    with pytest.raises(DataError) as caught:
        train(cfg)
    message = str(caught.value)
    assert all(f"/{name}" in message for name in broken), message
    assert "python check_data.py" in message
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))


@needs_membrane
def test_a_file_that_breaks_after_start_up_fails_with_its_name_from_a_worker(tmp_path):
    root = copy_membrane(tmp_path / "membrane", count=10)
    datamodule = instantiate(membrane_cfg(tmp_path, root, "data.num_workers=1").data)
    datamodule.setup("fit")
    for sample in datamodule.datasets["train"].samples:
        data = sample.image.read_bytes()
        sample.image.write_bytes(data[: len(data) // 3])
    batches = iter(datamodule.train_dataloader())
    with pytest.raises(DataError, match=r"image/\d+\.png: cannot be read .*truncated"):
        next(batches)
    batches._shutdown_workers()  # now, rather than when garbage collection finds it (a 5 s join)


@needs_membrane
def test_binary_masks_read_as_index_stop_the_run_with_the_fix(tmp_path):
    root = copy_membrane(tmp_path / "membrane", count=8)  # 8 of the 30 slices show it as well
    cfg = membrane_cfg(tmp_path, root, "data.mask_encoding=index")
    datamodule = instantiate(cfg.data)
    expected = r"\d\d% of the pixels .* ignore_index 255 and the rest is one class.*mask_values"
    with pytest.raises(DataError, match=expected):
        datamodule.setup("fit")


def test_an_all_ignore_mask_and_empty_or_missing_folders_are_errors(tmp_path):
    rng = np.random.default_rng(0)
    mask = blocks(rng)
    for i in range(3):
        save(tmp_path / f"d/images/{i}.png", image_for(mask, rng))
        save(tmp_path / f"d/masks/{i}.png", mask if i else np.full_like(mask, 255))
    datamodule = instantiate(compose_config("train", folder_overrides(tmp_path / "d"), tmp_path / "r").data)
    with pytest.raises(DataError, match=r"masks/0\.png: no labelled pixel"):
        datamodule.setup("fit")
    (tmp_path / "empty/images").mkdir(parents=True)
    datamodule = instantiate(compose_config("train", folder_overrides(tmp_path / "empty"), tmp_path / "r").data)
    with pytest.raises(DataError, match=r"no file matches images/\*\*/\*\{\.png,.*\} under data\.root=.*empty .*Fix: "):
        datamodule.setup("fit")
    datamodule = instantiate(compose_config("train", folder_overrides(tmp_path / "nowhere"), tmp_path / "r").data)
    with pytest.raises(DataError, match=r"data.root=.*nowhere is not a folder"):
        datamodule.setup("fit")


def test_images_of_different_sizes_in_one_batch_get_a_clear_error(tmp_path):
    rng = np.random.default_rng(1)
    for i, size in enumerate([(24, 32), (30, 32)]):
        mask = blocks(rng, size=size)
        save(tmp_path / f"d/images/{i}.png", image_for(mask, rng))
        save(tmp_path / f"d/masks/{i}.png", mask)
    cfg = compose_config(
        "train",
        folder_overrides(tmp_path / "d", "data.splits={train:null,val:1.0}", "data.eval_batch_size=2"),
        tmp_path / "r",
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    with pytest.raises(DataError, match=r"differ in size \(0: \(24, 32\), 1: \(30, 32\)\).*eval_batch_size=1"):
        next(iter(datamodule.val_dataloader()))


@needs_membrane
def test_browse_writes_what_the_model_sees(tmp_path):
    from segkit.tasks.browse_data import browse

    cfg = compose_config(
        "browse_data",
        ["data=membrane", f"data.root={MEMBRANE}", "augment=membrane", "num_samples=6", "columns=3"],
        tmp_path / "browse",
    )
    path = browse(cfg)
    picture = np.asarray(Image.open(path))
    crop = 256
    assert picture.shape[1] == 3 * (2 * crop + 4)  # three columns of image | overlay
    assert picture.shape[0] > 2 * (crop + 4)  # two rows under the legend
    # The overlay half shows membrane in its palette colour (red).
    overlay = picture[-(crop + 4) : -4, crop : 2 * crop]
    assert (overlay[..., 0].astype(int) - overlay[..., 1] > 60).mean() > 0.05


@needs_membrane
@pytest.mark.slow
def test_membrane_experiment_trains_on_the_real_slices(tmp_path):
    cfg = membrane_cfg(
        tmp_path,
        MEMBRANE,
        "debug=fast",
        "data.eval_batch_size=2",
        "data.crop_size=[128,128]",
    )
    metrics = train(cfg)
    assert 0 <= metrics["val/mIoU"] <= 1 and np.isfinite(metrics["train/loss_epoch"])
    saved = (tmp_path / "run/config.yaml").read_text()
    assert "isbi2012-membrane" in saved and "mask_values" in saved
