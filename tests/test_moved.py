"""Old addresses keep working, with no module left at them (segkit.moved): a checkpoint and an interrupted run
directory as the segkit before the regrouping wrote them (made here from fresh ones, every `_target_` rewritten to
its old module path) still evaluate, predict, export and resume in place; the table is what does it, and the
allow-list trusts each name once, at its new address."""

import importlib.util
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import segkit.moved
from conftest import ROOT, TINY_BACKBONE, run_entry
from helpers.fake_data import save
from segkit.config.trust import TRUSTED_CALLABLES, TRUSTED_MODULES, UntrustedTargetError, check_target
from segkit.moved import MOVED_TARGETS, moved_override, with_moved_targets
from segkit.runs.resume import recorded_overrides
from segkit.training.module import load_module

# New module path -> the one the segkit before the regrouping wrote (the schedules' oldest: segkit.optim). Written out
# here, not derived from the table under test.
OLD_CHECKPOINT = {
    "segkit.training.losses.": "segkit.losses.",
    "segkit.training.schedules.": "segkit.optim.",
    "segkit.runs.loggers.": "segkit.loggers.",
    "segkit.runs.checkpoint_io.": "segkit.checkpoint_io.",
}
OLD_RUN = {**OLD_CHECKPOINT, "segkit.training.schedules.": "segkit.schedules."}  # a run directory's


def test_every_old_address_has_a_trusted_new_one_and_no_module_of_its_own():
    for old, new in MOVED_TARGETS.items():
        check_target(new, key="_target_", source="the table")  # trusted where it lives now
        assert new not in MOVED_TARGETS, f"{old} -> {new} -> ...: map old names straight to the current one"
        with pytest.raises(UntrustedTargetError, match=f"the old address of {new}"):  # nothing trusts the old name
            check_target(old, key="_target_", source="an old config")
        module, name = old.rsplit(".", 1)
        gone = importlib.util.find_spec(module) is None or not hasattr(importlib.import_module(module), name)
        assert module == "segkit.callbacks" or gone, f"{old} is a shim"
    # Each trusted name once: no old module among the trusted ones, no old name among the trusted callables.
    old_modules = {old.rsplit(".", 1)[0] for old in MOVED_TARGETS} - {"segkit.callbacks", "segkit.training.losses"}
    assert not old_modules & set(TRUSTED_MODULES) and not set(MOVED_TARGETS) & TRUSTED_CALLABLES


def test_a_stored_config_and_recorded_overrides_read_through_the_table(tmp_path):
    stored = {"loss": {"_target_": "segkit.losses.WeightedSum", "losses": {"ce": {"_target_": "segkit.losses.X"}}}}
    assert with_moved_targets(stored)["loss"]["_target_"] == "segkit.training.losses.WeightedSum"
    assert with_moved_targets(stored)["loss"]["losses"]["ce"]["_target_"] == "segkit.losses.X"  # not in the table
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["model=fcn", "scheduler._target_=segkit.optim.cosine", "data.root=/data/segkit.optim.poly"])
    )
    assert recorded_overrides(run) == [
        "model=fcn",
        "scheduler._target_=segkit.training.schedules.cosine",
        "data.root=/data/segkit.optim.poly",  # no `_target_`: left as it is
    ]
    assert moved_override("+callbacks.x={_target_:segkit.callbacks.MaskWriter,masks_dir:m}") == (
        "+callbacks.x={_target_:segkit.reports.predictions.MaskWriter,masks_dir:m}"
    )


def rewritten(value, old: dict[str, str]):
    """`value` (text, or a checkpoint's plain data) with each new module path written as the old one."""
    if isinstance(value, str):
        for new, before in old.items():
            value = value.replace(new, before)
        return value
    if isinstance(value, dict):
        return {key: rewritten(item, old) for key, item in value.items()}
    if isinstance(value, list):
        return [rewritten(item, old) for item in value]
    return value


def to_old_checkpoint(path: Path) -> None:
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"] = rewritten(checkpoint["hyper_parameters"], OLD_CHECKPOINT)
    torch.save(checkpoint, path)


@pytest.fixture(scope="module")
def old_run(tmp_path_factory) -> dict[str, Path]:
    """A run stopped by SIGTERM in its second epoch, overrides naming `_target_`s included, then made old: every
    checkpoint, config.yaml, Hydra's record and the overrides name the old modules. Its last.ckpt is also copied
    out of the run, as a checkpoint sent on its own."""
    workdir = tmp_path_factory.mktemp("old")
    proc = run_entry(
        str(ROOT / "train.py"),
        "logger=csv",
        "test=false",
        "trainer.max_epochs=2",
        "data.image_size=[40,56]",
        "data.num_train=8",
        "data.num_val=4",
        "data.batch_size=4",
        TINY_BACKBONE,
        "loss.losses.dice._target_=segkit.training.losses.DiceLoss",
        "scheduler._target_=segkit.training.schedules.poly",
        "+callbacks.interrupt._target_=helpers.interrupt.KillAtStep",
        "+callbacks.interrupt.step=3",  # 2 steps an epoch: in the middle of the second
        f"+callbacks.interrupt.signum={int(signal.SIGTERM)}",
        "trusted_modules=[helpers.interrupt]",
        cwd=workdir,
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    (run,) = (workdir / "logs" / "train" / "runs").iterdir()
    assert not (run / "metrics.json").exists()
    checkpoints = sorted((run / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 2  # the best of the first epoch, and the one the stop saved
    for path in checkpoints:
        to_old_checkpoint(path)
    for record in [run / "config.yaml", *(run / ".hydra").glob("*.yaml")]:
        record.write_text(rewritten(record.read_text(), OLD_RUN))
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert "scheduler._target_=segkit.schedules.poly" in overrides
    assert "loss.losses.dice._target_=segkit.losses.DiceLoss" in overrides
    sent = workdir / "sent" / "old.ckpt"
    sent.parent.mkdir()
    sent.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    return {"workdir": workdir, "run": run, "checkpoint": sent}


@pytest.mark.slow
def test_an_old_checkpoint_evaluates_predicts_and_exports(old_run, tmp_path, monkeypatch):
    ckpt = old_run["checkpoint"]
    stored = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert stored["loss"]["losses"]["dice"]["_target_"] == "segkit.losses.DiceLoss"
    assert stored["scheduler"]["_target_"] == "segkit.optim.poly"  # as the oldest checkpoints have it
    for name in ("segkit.losses", "segkit.optim"):
        assert importlib.util.find_spec(name) is None  # no module answers at the old address

    proc = run_entry(str(ROOT / "evaluate.py"), f"ckpt_path={ckpt}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        save(tmp_path / "in" / f"{name}.png", (rng.random((37, 45, 3)) * 255).astype(np.uint8))
    proc = run_entry(
        str(ROOT / "predict.py"), f"ckpt_path={ckpt}", "input=in", "output=out", "num_workers=0", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["a.png", "b.png"]
    export = ["output=x", "formats=[torch_export]", "check_shapes=[[1,45,61]]"]
    proc = run_entry(str(ROOT / "export.py"), f"ckpt_path={ckpt}", *export, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "x" / "model.pt2").is_file()

    assert load_module(ckpt).hparams.scheduler["_target_"] == "segkit.training.schedules.poly"  # its record, renamed
    monkeypatch.setattr(segkit.moved, "MOVED_TARGETS", {})  # the control: without the table it is refused
    with pytest.raises(UntrustedTargetError, match="segkit.losses"):
        load_module(ckpt)


@pytest.mark.slow
def test_an_old_interrupted_run_resumes_in_place(old_run):
    run = old_run["run"]
    proc = run_entry(str(ROOT / "train.py"), "ckpt_path=last", "++callbacks.interrupt=null", cwd=old_run["workdir"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(run.parent.iterdir()) == [run]  # continued in place
    summary = yaml.safe_load((run / "metrics.json").read_text())
    assert (summary["epochs"], summary["global_step"]) == (2, 4) and summary["resumed_from"].endswith("last.ckpt")
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert saved["loss"]["losses"]["dice"]["_target_"] == "segkit.training.losses.DiceLoss"  # written anew
    assert saved["scheduler"]["_target_"] == "segkit.training.schedules.poly"
