"""Config mistakes fail at start-up in seconds, naming the key (segkit.config.checks), and predict.py writes every
mask it can before it fails on the inputs it cannot read. No training here."""

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from conftest import ROOT, compose_config, run_script, tiny_train_config
from helpers.fake_data import save
from segkit.config.checks import ConfigError, find_unknown_keys, validate


def failure(cfg, task: str = "train") -> str:
    with pytest.raises(ConfigError) as caught:
        validate(cfg, task)
    return str(caught.value)


# ------------------------------------------------------------------------------------------ the entry scripts


def test_a_misspelled_key_fails_in_seconds_with_the_key_it_meant(tmp_path):
    start = time.perf_counter()
    proc = run_script(str(ROOT / "train.py"), "trainer.max_epoch=1", cwd=tmp_path, timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (
        "Unknown key trainer.max_epoch. Did you mean trainer.max_epochs? (To add a new key on purpose, use "
        "+trainer.max_epoch=1.)"
    ) in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "logs").exists()  # stopped before Hydra made a run
    print(f"train.py trainer.max_epoch=1 failed after {elapsed:.1f} s")


@pytest.mark.parametrize(
    "config,argv",
    [
        ("evaluate", ["ckpt_path=x.ckpt", "splti=test"]),
        ("predict", ["ckpt_path=x.ckpt", "input=in", "inference.scale=[0.5]"]),
        ("export", ["ckpt_path=x.ckpt", "opsett=17"]),
        ("check_data", ["data=membrane", "ful=false"]),
        ("browse_data", ["num_sample=4"]),
        ("bench", ["repeat=5"]),
    ],
)
def test_every_entry_config_names_a_misspelled_key(config, argv):
    """What each entry script's check_overrides(<config>) says (tests/test_layout.py: every script calls it first;
    the train.py test above runs one script end to end)."""
    with pytest.raises(ConfigError) as caught:
        find_unknown_keys(config, argv)
    key = argv[-1].split("=")[0]
    assert f"Unknown key {key}. Did you mean " in str(caught.value) and f"use +{argv[-1]}.)" in str(caught.value)


def test_a_batch_size_that_is_no_number_fails_before_any_data_is_read(tmp_path):
    """The train task itself (what train.py runs after composing; the script end to end: the test above)."""
    from segkit.tasks.train import train

    cfg = compose_config("train", ["data.batch_size=abc", "logger=csv"], tmp_path / "run")
    with pytest.raises(ConfigError) as caught:
        train(cfg)
    message = str(caught.value)
    assert "data.batch_size='abc' (a string) is not a whole number" in message
    assert "Fix: data.batch_size=8" in message and "not supported between" not in message
    assert not (tmp_path / "run").exists()  # nothing written, no data read, no model built


# --------------------------------------------------------------------------------- misspelled keys, in-process


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "model=fcn,unet", "backbone=resnet18,efficientnet_b0", "debug=fast"],
        ["-m", "model=choice(fcn,unet)", "seed=range(1,3)", "optimizer.lr=0.1,0.01"],
        ["-m", "hparams_search=lr_loss", "hydra.sweeper.n_trials=2", "optimizer.lr=interval(0.001,0.1)"],
        ["-m", "hydra/launcher=local", "hydra.launcher.timeout_min=5", "hydra.job.chdir=false"],
        [
            "+callbacks.interrupt._target_=helpers.interrupt.KillAtStep",
            "+callbacks.interrupt.step=5",
            "callbacks.interrupt.step=6",
        ],
        ["++callbacks.interrupt=null", "++trainer.max_steps=4", "~callbacks.prediction_samples"],
        ["model=fcn", "backbone=resnet50", "model.upsample=transposed"],
        ["experiment=membrane_unet", "data.root=/somewhere", "data.repeat=3", "data.splits.test=0.1"],
        ["ckpt_path=last", "++callbacks.interrupt=null"],
        ["data=voc", "data.splits.train=ImageSets/Segmentation/trainval.txt", "trainer.plugins=null"],
        ["--cfg", "job", "trainer.max_epochs=2"],
        ["--help"],
    ],
)
def test_what_hydra_accepts_passes(argv):
    find_unknown_keys("train", argv)


@pytest.mark.parametrize(
    "config,argv,message",
    [
        (
            "train",
            ["trainer.max_epoch=1"],
            "Unknown key trainer.max_epoch. Did you mean trainer.max_epochs? "
            "(To add a new key on purpose, use +trainer.max_epoch=1.)",
        ),
        ("train", ["-m", "optimizer.lrr=0.1,0.01"], "Unknown key optimizer.lrr. Did you mean optimizer.lr?"),
        ("train", ["data=folder", "data.splts.test=0.1"], "Did you mean data.splits.test?"),
        ("train", ["tset=false"], "Unknown key tset. Did you mean test?"),
        ("train", ["experiment=membrane_unet", "data.mask_value=[0,255]"], "Did you mean data.mask_values?"),
        ("train", ["callbacks.ema.decay=0.9"], "callbacks has no key ema (its keys: dashboard, last_checkpoint, "),
        (
            "evaluate",
            ["ckpt_path=x", "data_overrides.root=/x"],
            "Unknown key data_overrides.root: data_overrides holds no keys yet. "
            "Fix: add it with +data_overrides.root=/x.",
        ),
    ],
)
def test_a_key_the_config_lacks_is_named_with_the_closest_ones(config, argv, message):
    with pytest.raises(ConfigError) as caught:
        find_unknown_keys(config, argv)
    assert message in str(caught.value)


# ---------------------------------------------------------------------------------------- values, in-process


def test_values_of_the_wrong_type_or_range_name_the_key_value_and_fix(tmp_path):
    cfg = compose_config(
        "train",
        [
            "optimizer.lr=-1",
            "trainer.max_epochs=0",
            "data.num_workers=-2",
            "trainer.precision=bf32",
            "optimizer.weight_decay=abc",
        ],
        tmp_path,
    )
    message = failure(cfg)
    assert message.startswith("5 config errors:")
    assert (
        "optimizer.lr=-1 is out of range (not above 0). Allowed: a number > 0 (the learning rate). "
        "Fix: optimizer.lr=0.001." in message
    )
    assert "trainer.max_epochs=0 is out of range (below 1). Allowed: a whole number >= 1, -1 (no limit)" in message
    assert "data.num_workers=-2 is out of range (below 0)" in message
    assert "trainer.precision='bf32' (a string) is not a precision Lightning knows. Allowed: one of " in message
    assert "bf16-mixed" in message and "Fix: trainer.precision=32-true" in message
    assert "optimizer.weight_decay='abc' (a string) is not a number" in message


@pytest.mark.parametrize(
    "override,expected",
    [
        ("data.batch_size=abc", "data.batch_size='abc' (a string) is not a whole number. Allowed: a whole number >= 1"),
        ("data.batch_size=true", "data.batch_size=True is a boolean, not a whole number"),
        ("data.eval_batch_size=0", "data.eval_batch_size=0 is out of range (below 1)"),
        ("data.crop_size=[64,64,3]", "data.crop_size=[64, 64, 3] has 3 entries, not 2 (H, W)"),
        ("data.image_size=0", "data.image_size=0 has a side below 1"),
        ("data.num_classes=1", "data.num_classes=1 is out of range (below 2)"),
        ("data.class_names=[a,b]", "data.class_names has 2 entries but data.num_classes=4: one name per class"),
        ("data.palette=[[0,0,0],[1,2,3],[4,5,6],[7,8,300]]", "data.palette has the entry [7, 8, 300]"),
        ("data.ignore_index=2", "data.ignore_index=2 is a class id (data.num_classes=4: classes are 0..3)"),
        ("trainer.min_epochs=9", "trainer.min_epochs=9 is more than trainer.max_epochs=8"),
        ("trainer.devices=all", "trainer.devices='all' (a string) is not a device count or list"),
        ("trainer.accumulate_grad_batches=0.5", "trainer.accumulate_grad_batches=0.5 is not a whole number"),
    ],
)
def test_each_checked_key(tmp_path, override, expected):
    assert expected in failure(compose_config("train", [override], tmp_path))


def test_a_square_may_be_one_number_and_numeric_strings_become_numbers(tmp_path):
    cfg = compose_config(
        "train",
        [
            "data=folder",
            "data.root=/data",
            "data.crop_size=128",
            "data.batch_size='4'",
            "optimizer.lr='1e-3'",
            "trainer.devices='0,1'",
            "data.eval_batch_size=null",
            "trainer.max_epochs=-1",
        ],
        tmp_path,
    )
    validate(cfg, "train")
    assert cfg.data.crop_size == [128, 128] and cfg.data.batch_size == 4 and cfg.optimizer.lr == 0.001
    assert cfg.trainer.devices == "0,1" and cfg.trainer.max_epochs == -1
    crop = OmegaConf.to_container(cfg.augment, resolve=True)["train"]  # the pipeline's crop takes the square
    assert any(t.get("height") == 128 and t.get("width") == 128 for t in crop)
    instantiate(cfg.data.train_transforms)


def test_a_square_image_size_flows_into_the_synthetic_crop(tmp_path):
    cfg = validate(compose_config("train", ["data.image_size=48"], tmp_path), "train")
    assert cfg.data.image_size == [48, 48] and cfg.data.crop_size == [48, 48]
    assert OmegaConf.to_container(cfg.data, resolve=True)["crop_size"] == [48, 48]


def test_predict_and_evaluate_shapes(tmp_path):
    message = failure(
        compose_config(
            "predict",
            ["ckpt_path=x", "input=in", "batch_size=0", "num_workers=x", "inference=slide", "inference.crop_size=64"],
            tmp_path,
        ),
        "predict",
    )
    assert "batch_size=0 is out of range (below 1)" in message and "num_workers='x' (a string)" in message
    cfg = compose_config(
        "evaluate",
        ["ckpt_path=x", "inference=slide", "inference.crop_size=64", "+data_overrides.batch_size=2"],
        tmp_path,
    )
    assert validate(cfg, "evaluate").inference.crop_size == [64, 64]
    cfg = compose_config("evaluate", ["ckpt_path=x", "+data_overrides.eval_batch_size=-1"], tmp_path)
    assert "data_overrides.eval_batch_size=-1 is out of range" in failure(cfg, "evaluate")


# --------------------------------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained model's checkpoint: predict needs its weights and configs, not a good model."""
    from segkit.training.module import build_module, save_module

    folder = tmp_path_factory.mktemp("checkpoint")
    return save_module(build_module(tiny_train_config(folder / "run")), folder / "tiny.ckpt")


def write_inputs(folder: Path) -> list[Path]:
    """Three good images (two sizes), a corrupt one named .png and a truncated one; returns the bad ones."""
    rng = np.random.default_rng(0)
    for name, size in (("a", (40, 56)), ("b", (40, 56)), ("sub/c", (33, 47))):
        save(folder / f"{name}.png", (rng.random((*size, 3)) * 255).astype(np.uint8))
    (folder / "notes.png").write_text("not an image")
    whole = (folder / "a.png").read_bytes()
    (folder / "sub/cut.png").write_bytes(whole[: len(whole) // 2])  # the header reads; the pixels do not
    return [folder / "notes.png", folder / "sub/cut.png"]


def test_predict_writes_every_readable_mask_then_fails_naming_the_bad_files(checkpoint, tmp_path):
    from segkit.tasks.predict import UnreadableInputs, predict

    bad = write_inputs(tmp_path / "in")
    cfg = compose_config(
        "predict",
        [
            f"ckpt_path={checkpoint}",
            f"input={tmp_path / 'in'}",
            f"output={tmp_path / 'out'}",
            "batch_size=2",
            "num_workers=1",
            "trainer.accelerator=cpu",
        ],
        tmp_path / "run",
    )
    with pytest.raises(UnreadableInputs) as caught:
        predict(validate(cfg, "predict"))
    assert sorted(caught.value.failed) == sorted(bad) and caught.value.written == 3
    message = str(caught.value)
    assert message.startswith("2 of 5 input(s) could not be predicted; the other 3 mask(s) are in ")
    assert f"  - {bad[0]}: cannot be read (UnidentifiedImageError" in message
    assert f"  - {bad[1]}: cannot be read (OSError: image file is truncated" in message
    for name in ("a", "b", "sub/c"):
        mask = Image.open(tmp_path / "out/masks" / f"{name}.png")
        assert mask.mode == "P" and (tmp_path / "out/overlays" / f"{name}.png").is_file()
    assert len(list((tmp_path / "out/masks").rglob("*.png"))) == 3


def test_the_predict_script_exits_1_with_the_list(checkpoint, tmp_path):
    """predict.py's own main (the function under @hydra.main), on the config its command line composes: the list
    becomes the exit message (status 1, no traceback), as `sys.exit(message)` does."""
    script = load_script("predict.py")
    bad = write_inputs(tmp_path / "in")
    (tmp_path / "in/...png").write_bytes((tmp_path / "in/b.png").read_bytes())  # no extension to Pillow: still written
    overrides = [
        f"ckpt_path={checkpoint}",
        f"input={tmp_path / 'in'}",
        f"output={tmp_path / 'out'}",
        "num_workers=0",
        "trainer.accelerator=cpu",
    ]
    cfg = compose_config("predict", overrides, tmp_path / "run")
    with pytest.raises(SystemExit) as exited:
        script.main.__wrapped__(cfg)
    message = exited.value.code
    assert isinstance(message, str)  # sys.exit(str): printed to stderr, exit status 1
    assert "2 of 6 input(s) could not be predicted; the other 4 mask(s)" in message
    assert all(f"  - {path}: cannot be read" in message for path in bad)
    assert (tmp_path / "out/masks/...png").is_file()


def load_script(name: str):
    """An entry script as a module (its `__main__` block does not run)."""
    spec = importlib.util.spec_from_file_location(f"_script_{Path(name).stem}", ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
