"""Nothing a file names is called unless it is allowed: crafted checkpoints whose configs name file-writing
callables at several depths are refused by evaluate, predict and export before anything runs; every shipped
config passes; a user's own package is trusted only by the current command."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_config, tiny_train_config
from helpers.fake_data import save
from segkit.config.trust import UntrustedTargetError, check_target, check_targets
from segkit.runs.checkpoints import CheckpointError
from segkit.tasks.evaluate import evaluate
from segkit.tasks.export import export
from segkit.tasks.predict import predict
from segkit.training.module import SegmentationModule, build_module, load_module

WRITE_JSON = "segkit.runs.atomic.write_json"  # the project's own functions write files too
TASKS = {"evaluate": evaluate, "predict": predict, "export": export}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[dict, dict]:
    """(hyperparameters, state dict) of a module built from the default (tiny) train config."""
    module = build_module(tiny_train_config(tmp_path_factory.mktemp("build") / "run"))
    return copy.deepcopy(dict(module.hparams)), module.state_dict()


def save_checkpoint(path: Path, hparams: dict, state_dict: dict, **extra) -> Path:
    torch.save(
        {
            "state_dict": state_dict,
            "hyper_parameters": hparams,
            "epoch": 0,
            "global_step": 1,
            "pytorch-lightning_version": "2.6.6",
            **extra,
        },
        path,
    )
    return path


def p(path: Path) -> dict:
    return {"_target_": "pathlib.Path", "_args_": [str(path)]}


# name -> (how it alters the hyperparameters, the key the error names, the target it names, the marker file).
# Each payload writes its marker when Hydra instantiates it (see test_payloads_write_files_when_instantiated).
def _model(hp, m):
    hp["model"] = {"_target_": "pathlib.Path.write_text", "_args_": [p(m), "pwned"]}
    return hp["model"]


def _loss_in_sum(hp, m):
    hp["loss"]["losses"]["dice"] = {"_target_": "shutil.copyfile", "src": __file__, "dst": str(m)}
    return hp["loss"]["losses"]["dice"]


def _transform(hp, m):
    hp["data"]["train_transforms"] = [
        {"_target_": "albumentations.HorizontalFlip", "p": 0.5},
        {"_target_": "albumentations.ColorJitter", "p": 0.5},
        {"_target_": "numpy.save", "file": str(m), "arr": [1, 2]},
    ]
    return hp["data"]["train_transforms"][2]


def _scheduler(hp, m):
    hp["scheduler"] = {"_target_": "torch.save", "obj": [1], "f": str(m)}
    return hp["scheduler"]


def _optimizer_exec(hp, m):
    hp["optimizer"] = {"_target_": "builtins.exec", "_args_": [f"open({str(m)!r}, 'w').write('pwned')"]}
    return None  # Hydra's own blocklist stops this one; segkit refuses it first


def _backbone_system(hp, m):
    hp["model"]["backbone"]["act_layer"] = {"_target_": "os.system", "_args_": [f"touch {m}"]}
    return None  # blocklisted by Hydra too


def _own_function(hp, m):
    hp["data"]["eval_transforms"] = [
        {"_target_": WRITE_JSON, "path": p(m), "payload": {"pwned": True}, "_convert_": "all"}
    ]
    return hp["data"]["eval_transforms"][0]


def _instantiator(hp, m):
    hp["_instantiator"] = "pathlib.Path.touch"
    return None


def _interpolation(hp, m):
    hp["loss"]["losses"]["ce"] = f"${{oc.create:{{_target_:numpy.save,file:'{m}',arr:[1]}}}}"
    return {"_target_": "segkit.training.losses.WeightedSum", "losses": {"ce": hp["loss"]["losses"]["ce"]}}


CASES = {
    "model": (_model, "model._target_", "pathlib.Path.write_text", True),
    "loss_in_weighted_sum": (_loss_in_sum, "loss.losses.dice._target_", "shutil.copyfile", True),
    "transform_in_list": (_transform, "data.train_transforms[2]._target_", "numpy.save", True),
    "scheduler": (_scheduler, "scheduler._target_", "torch.save", True),
    "optimizer_exec": (_optimizer_exec, "optimizer._target_", "builtins.exec", True),
    "backbone_kwarg_system": (_backbone_system, "model.backbone.act_layer._target_", "os.system", True),
    "own_function": (_own_function, "data.eval_transforms[0]._target_", WRITE_JSON, True),
    "lightning_instantiator": (_instantiator, "hyper_parameters._instantiator", "pathlib.Path.touch", False),
    "interpolation": (_interpolation, "loss.losses.ce", "${oc.create:", False),
}


def marker_for(root: Path, name: str) -> Path:
    return root / f"pwned-{name}.npy"  # .npy: numpy.save would add it otherwise


@pytest.fixture(scope="module")
def crafted(trained, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (crafted checkpoint, marker file its payload would write)."""
    root = tmp_path_factory.mktemp("crafted")
    hparams, state = trained
    out = {}
    for name, (alter, *_) in CASES.items():
        hp = copy.deepcopy(hparams)
        marker = marker_for(root, name)
        alter(hp, marker)
        out[name] = (save_checkpoint(root / f"{name}.ckpt", hp, state), marker)
    return out


@pytest.fixture(scope="module")
def task_configs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    image = save(root / "in" / "a.png", np.zeros((40, 56, 3), dtype=np.uint8))
    return {
        "evaluate": compose_config("evaluate", ["ckpt_path=x", "trainer.accelerator=cpu"], root / "evaluate"),
        "predict": compose_config(
            "predict",
            ["ckpt_path=x", f"input={image}", f"output={root / 'p'}", "trainer.accelerator=cpu"],
            root / "predict",
        ),
        "export": compose_config("export", ["ckpt_path=x", f"output={root / 'e'}"], root / "export"),
    }


def with_checkpoint(cfg, ckpt: Path):
    cfg = copy.deepcopy(cfg)
    OmegaConf.update(cfg, "ckpt_path", str(ckpt))
    return cfg


@pytest.mark.parametrize(
    "name", ["model", "loss_in_weighted_sum", "transform_in_list", "scheduler", "own_function", "interpolation"]
)
def test_payloads_write_files_when_instantiated(name, tmp_path):
    """The control: without segkit's check, Hydra runs these payloads and the files appear."""
    hp = {"model": {"backbone": {}}, "loss": {"losses": {}}, "data": {}}
    marker = marker_for(tmp_path, name)
    node = CASES[name][0](hp, marker)
    try:
        instantiate(node)
    except Exception:
        pass  # the payload ran; what it returned may not fit
    assert marker.exists()


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", CASES)
def test_crafted_checkpoints_are_refused_before_anything_runs(crafted, task_configs, task, name):
    ckpt, marker = crafted[name]
    _, key, target, trust_hint = CASES[name]
    with pytest.raises((UntrustedTargetError, CheckpointError)) as info:
        TASKS[task](with_checkpoint(task_configs[task], ckpt))
    message = str(info.value)
    assert key in message and target in message and str(ckpt) in message, message
    assert "Fix:" in message
    if trust_hint:
        assert "trusted_modules=[" in message
    assert not marker.exists() and not marker.with_suffix("").exists()
    assert not list(marker.parent.glob("pwned*"))


def test_lightning_loader_is_segkits_and_refuses_too(crafted):
    ckpt, marker = crafted["model"]
    with pytest.raises(UntrustedTargetError, match="pathlib.Path.write_text"):
        SegmentationModule.load_from_checkpoint(ckpt, weights_only=True)
    assert not marker.exists()


@pytest.mark.parametrize(
    "target",
    [
        "torch.nn.Module.__init__",  # an attribute of a class
        "segkit.models.UNet.register_forward_hook",
        "torch.nn.functional.relu",  # a function of a trusted module
        "segkit.data.datamodule.run_splits",  # a function of a trusted module
        "segkit.training.losses.nn",  # a module
        "segkit.models.backbone.Path",  # pathlib.Path, imported into a trusted module
        "segkit.training.schedules._with_warmup",  # only the listed schedules of segkit.training.schedules
        "segkit.models.NoSuchModel",
    ],
)
def test_only_classes_of_trusted_modules_pass(target):
    with pytest.raises(UntrustedTargetError, match="Refusing"):
        check_target(target, key="k", source="test")


def test_untrusted_modules_are_never_imported():
    assert "antigravity" not in sys.modules
    with pytest.raises(UntrustedTargetError, match="not in a trusted module"):
        check_targets({"a": [{"b": {"_target_": "antigravity.geohash"}}]}, source="test")
    assert "antigravity" not in sys.modules


def test_interpolations_are_checked_as_hydra_resolves_them():
    payload = {"_target_": "segkit.training.losses.WeightedSum", "losses": {"ce": "${oc.create:{_target_:torch.save}}"}}
    with pytest.raises(UntrustedTargetError, match=r"losses\.ce\._target_ = \"torch.save\""):
        check_targets(payload, source="test")
    with pytest.raises(UntrustedTargetError, match="holds no interpolations"):
        check_targets({"data": {"root": "${oc.env:HOME}"}}, source="test", resolved=True)


@pytest.fixture
def user_package(tmp_path, monkeypatch) -> str:
    """A package of the user's own, importable, holding a loss class."""
    name = "segkit_user_pkg_for_tests"
    package = tmp_path / "site" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from segkit.training.losses import CrossEntropyLoss\n\n\nclass MyLoss(CrossEntropyLoss):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield name
    sys.modules.pop(name, None)


def test_a_users_package_is_trusted_by_the_command_never_by_the_checkpoint(trained, user_package, tmp_path):
    hparams, state = trained
    hp = copy.deepcopy(hparams)
    hp["loss"] = {"_target_": f"{user_package}.MyLoss", "ignore_index": 255}
    # A checkpoint cannot grant trust: a top-level key is ignored, a hyperparameter refused.
    ckpt = save_checkpoint(tmp_path / "user.ckpt", hp, state, trusted_modules=[user_package])
    with pytest.raises(UntrustedTargetError, match=rf"loss\._target_ = \"{user_package}.MyLoss\".*trusted_modules="):
        load_module(ckpt)
    hp_granting = {**copy.deepcopy(hp), "trusted_modules": [user_package]}
    granting = save_checkpoint(tmp_path / "granting.ckpt", hp_granting, state)
    with pytest.raises(CheckpointError, match="hyper_parameters.trusted_modules"):
        load_module(granting, trusted=[user_package])

    cfg = compose_config("evaluate", [f"ckpt_path={ckpt}", "trainer.accelerator=cpu"], tmp_path / "eval")
    with pytest.raises(UntrustedTargetError):
        evaluate(cfg)
    cfg = compose_config(
        "evaluate",
        [f"ckpt_path={ckpt}", "trainer.accelerator=cpu", f"trusted_modules=[{user_package}]"],
        tmp_path / "eval2",
    )
    metrics = evaluate(cfg)
    assert 0 <= metrics["val/mIoU"] <= 1

    train_cfg = tiny_train_config(tmp_path / "train", f"loss._target_={user_package}.MyLoss")
    with pytest.raises(UntrustedTargetError, match="trusted_modules="):
        check_targets(train_cfg, source="the train config", trusted=train_cfg.trusted_modules)
    train_cfg = tiny_train_config(
        tmp_path / "train", "loss=ce", f"loss._target_={user_package}.MyLoss", f"trusted_modules=[{user_package}]"
    )
    check_targets(train_cfg, source="the train config", trusted=train_cfg.trusted_modules)
    plain = {k: OmegaConf.to_container(train_cfg[k], resolve=True) for k in ("model", "loss", "optimizer", "data")}
    with pytest.raises(UntrustedTargetError, match="the SegmentationModule hyperparameters"):
        SegmentationModule(**plain)  # the module, too, trusts only what it is given
    module = build_module(train_cfg)  # the train task passes on the command's trust
    assert type(module.criterion).__name__ == "MyLoss" and "trusted_modules" not in module.hparams


def test_unreadable_and_foreign_files_say_what_to_do(trained, tmp_path):
    hparams, state = trained
    with pytest.raises(FileNotFoundError, match="does not exist. Fix: pass ckpt_path="):
        load_module(tmp_path / "nowhere.ckpt")
    good = save_checkpoint(tmp_path / "good.ckpt", hparams, state)
    data = good.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all" * 100)
    for name in ("truncated", "empty", "garbage"):
        with pytest.raises(CheckpointError, match=r"cannot be read: it is truncated.*Fix: copy the file again"):
            load_module(tmp_path / f"{name}.ckpt")
    torch.save([1, 2], tmp_path / "list.ckpt")
    torch.save({"state_dict": state}, tmp_path / "nohparams.ckpt")
    torch.save({"state_dict": state, "hyper_parameters": {"model": {}}}, tmp_path / "partial.ckpt")
    torch.save({"state_dict": state, "hyper_parameters": hparams, "thing": Path("x")}, tmp_path / "objects.ckpt")
    for name, says in (
        ("list", "holds a list"),
        ("nohparams", "has no hyper_parameters"),
        ("partial", "has no hyper_parameters.loss"),
        ("objects", "more than tensors and plain data (Unsupported global: GLOBAL pathlib.PosixPath)"),
    ):
        with pytest.raises(CheckpointError) as info:
            load_module(tmp_path / f"{name}.ckpt")
        assert says in str(info.value) and "Fix: pass a checkpoint written by train.py" in str(info.value)
        assert "weights_only=False" not in str(info.value)


def test_metric_states_may_differ_but_weights_may_not(trained, tmp_path):
    hparams, state = trained
    older = {k: v for k, v in state.items() if k.startswith(("net.", "criterion."))}
    older["val_retired_metric.total"] = torch.zeros(1)
    module = load_module(save_checkpoint(tmp_path / "older.ckpt", hparams, older))
    assert torch.equal(
        module.state_dict()["net.backbone.encoder.conv1.weight"], state["net.backbone.encoder.conv1.weight"]
    )
    broken = {k: v for k, v in state.items() if k != "net.backbone.encoder.conv1.weight"}
    with pytest.raises(CheckpointError, match="missing net.backbone.encoder.conv1.weight"):
        load_module(save_checkpoint(tmp_path / "broken.ckpt", hparams, broken))
