"""Ensembles of checkpoints (segkit.training.ensemble; `ckpt_path=[a,b]` or a sweep directory in evaluate.py and
predict.py): two identical members score as the single model, two different ones predict from their hand-averaged
probabilities (each through its own test-time augmentation), members of other classes are refused naming both
files, and a sweep directory gives each job's best checkpoint. The members are the shared trained run's checkpoint
and a copy with perturbed weights, written by the repo's own checkpoint writer."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_config
from helpers.fake_data import save
from segkit.errors import MissingFile
from segkit.runs.checkpoint_io import AtomicCheckpointIO
from segkit.runs.checkpoints import CheckpointError, read_checkpoint
from segkit.runs.model_files import model_files
from segkit.tasks.evaluate import evaluate
from segkit.tasks.predict import predict
from segkit.training.ensemble import Ensemble, EnsembleError, load_models
from segkit.training.inference import Inference
from segkit.training.module import load_module

pytestmark = pytest.mark.slow  # every test reads the shared trained run


def rewrite(source: Path, target: Path, change) -> Path:
    """A copy of a checkpoint with `change(checkpoint)` applied, saved as train.py saves (atomically)."""
    checkpoint = read_checkpoint(source)
    change(checkpoint)
    AtomicCheckpointIO().save_checkpoint(checkpoint, target)
    return target


def perturb(checkpoint: dict) -> None:
    """Every float weight scaled by its own random factor exp(0.3 z): another network, signs (and BatchNorm's
    positive variances) kept."""
    generator = torch.Generator().manual_seed(1)
    for key, value in checkpoint["state_dict"].items():
        if key.startswith("net.") and value.is_floating_point():
            value.mul_(torch.exp(0.3 * torch.randn(value.shape, generator=generator)))


@pytest.fixture(scope="module")
def members(trained_run, tmp_path_factory) -> tuple[Path, Path]:
    """(the shared run's last checkpoint, a perturbed copy of it)."""
    first = trained_run[1] / "checkpoints" / "last.ckpt"
    return first, rewrite(first, tmp_path_factory.mktemp("ensemble") / "perturbed.ckpt", perturb)


def test_two_identical_checkpoints_score_as_the_single_model(members, tmp_path, capsys):
    first, _ = members
    single = evaluate(compose_config("evaluate", [f"ckpt_path={first}"], tmp_path / "single"))
    twice = evaluate(compose_config("evaluate", [f"ckpt_path=[{first},{first}]"], tmp_path / "twice"))
    assert twice.keys() == single.keys() - {"val/loss"} and "val/mIoU" in single  # no single network, no loss
    for key, value in single.items():
        if key != "val/loss":  # an ensemble has no single network's loss
            assert twice[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    written = json.loads((tmp_path / "twice" / "metrics.json").read_text())
    assert written["members"] == [str(first), str(first)] and written["checkpoint"] == [str(first), str(first)]
    assert json.loads((tmp_path / "single" / "metrics.json").read_text())["members"] is None
    shown = " ".join(capsys.readouterr().out.split())  # as wrapped to the console's width
    assert (
        "val of Ensemble of 2 (Inference(mode=whole, crop_size=None, stride=None, scales=[1.0], flip=False, " in shown
    )
    assert f"blend=mean)): {first}, {first}" in shown


def test_different_members_average_their_own_tta_probabilities(members):
    tta = {"scales": [0.75, 1.0], "flip": True}
    module = load_models(members, tta)
    assert isinstance(module.inference, Ensemble) and not module.inference.is_plain
    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    own = [Inference(**tta)(member, images, module.task) for member, _ in module.inference.members]
    assert not torch.allclose(own[0], own[1], atol=1e-3)  # the members disagree
    averaged = module.inference(module, images, module.task)
    torch.testing.assert_close(averaged, (own[0] + own[1]) / 2, rtol=1e-5, atol=1e-6)
    assert torch.equal(module.inference.predict(module, images, module.task), averaged.argmax(1))


def test_predict_writes_the_ensembles_masks(members, tmp_path):
    rng = np.random.default_rng(2)
    arrays = {name: (rng.random((40, 56, 3)) * 255).astype(np.uint8) for name in ("a", "b")}
    for name, array in arrays.items():
        save(tmp_path / "in" / f"{name}.png", array)
    overrides = [f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", "num_workers=0", "overlays=false"]
    predict(compose_config("predict", [f"ckpt_path=[{members[0]},{members[1]}]", *overrides], tmp_path / "run"))
    nets = [load_module(path) for path in members]
    for name, array in arrays.items():
        image = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
        expected = sum(Inference()(net, image, net.task) for net in nets).argmax(1)[0].numpy()
        assert np.array_equal(np.array(Image.open(tmp_path / "out" / "masks" / f"{name}.png")), expected)


@pytest.mark.parametrize(
    ("key", "value"), [("class_names", ["bg", "disc", "square", "star"]), ("ignore_index", 0), ("in_channels", 1)]
)
def test_members_of_other_classes_are_refused_naming_both(members, tmp_path, key, value):
    def relabel(checkpoint: dict) -> None:
        checkpoint["hyper_parameters"]["data"][key] = value
        if key == "in_channels":  # the network too, so that the file loads and the ensemble is what refuses
            checkpoint["hyper_parameters"]["model"]["in_channels"] = 1
            stem = next(k for k, v in checkpoint["state_dict"].items() if v.ndim == 4)
            checkpoint["state_dict"][stem] = checkpoint["state_dict"][stem][:, :1].clone()

    other = rewrite(members[0], tmp_path / "other.ckpt", relabel)
    with pytest.raises(EnsembleError, match=rf'"{members[0]}" and "{other}" cannot be ensembled: their {key} differ'):
        load_models([members[0], other], None)


def test_a_sweep_directory_gives_each_jobs_best_checkpoint(members, tmp_path):
    sweep = tmp_path / "multiruns" / "stamp"
    files = []
    for job, member in enumerate(members):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(f"- data.fold={job}\n")
        files.append(sweep / str(job) / "checkpoints" / "best-epoch001-mIoU0.5000.ckpt")
        files[-1].parent.mkdir()
        shutil.copy(member, files[-1])
        shutil.copy(member, files[-1].parent / "last.ckpt")
    assert model_files(sweep) == files
    assert model_files(str(sweep / "1")) == [files[1]]  # a run directory: its best checkpoint
    files[1].unlink()
    assert model_files(str(sweep / "1")) == [files[1].parent / "last.ckpt"]  # else its last
    shutil.copy(members[1], files[1])
    assert model_files([str(members[0]), str(sweep)]) == [members[0], *files]
    from_sweep = evaluate(compose_config("evaluate", [f"ckpt_path={sweep}", "split=test"], tmp_path / "a"))
    listed = evaluate(compose_config("evaluate", [f"ckpt_path=[{files[0]},{files[1]}]", "split=test"], tmp_path / "b"))
    assert from_sweep == listed
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["members"] == [str(f) for f in files]


def test_ckpt_paths_that_name_no_checkpoint(tmp_path):
    with pytest.raises(MissingFile, match="does not exist"):
        model_files([str(tmp_path / "nothing.ckpt")])
    with pytest.raises(CheckpointError, match="neither a run directory .* nor a sweep directory"):
        model_files(tmp_path)
    (tmp_path / "sweep" / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "sweep" / "0" / ".hydra" / "overrides.yaml").write_text("- data.fold=0\n")
    with pytest.raises(CheckpointError, match=r"job 0 of the sweep .* has no checkpoint .*ckpt_path=\[a,b,...\]"):
        model_files(tmp_path / "sweep")


def test_members_follow_the_module_the_trainer_converts(members):
    """The trainer moves and converts only the module it runs (the first member): the others follow on first use."""
    module = load_models(members, None)
    module.to(torch.float64)
    images = torch.rand(1, 3, 40, 56, dtype=torch.float64)
    assert module.inference(module, images, module.task).dtype == torch.float32
    assert all(next(member.parameters()).dtype == torch.float64 for member, _ in module.inference.members)
    with pytest.raises(ValueError, match="not one of its members"):
        module.inference(load_module(members[0]), images, module.task)
