"""A run interrupted at any moment after its first checkpoint and resumed ends with the metrics history of the
uninterrupted run, bit for bit (CPU, fp32): SIGTERM and Ctrl-C save mid-epoch and stop, SIGKILL loses only what
came after the last checkpoint. `ckpt_path=last` never touches another run, and a finished run is left alone."""

import csv
import hashlib
import io
import signal
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, TINY_BACKBONE, compose_config, run_entry, run_forked
from helpers import soak
from segkit.runs.stop import StopAndSave
from segkit.tasks.evaluate import evaluate
from segkit.tasks.train import train

# One thread throughout: the killed runs run in a fork (run_forked), which computes on one, and every history is
# compared bit for bit with the uninterrupted run's.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

STEPS_PER_EPOCH = 4  # 16 training images in batches of 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return soak.write_dataset(tmp_path_factory.mktemp("data"))


def overrides(root: Path) -> list[str]:
    """The soak script's run, 2 epochs, on the tiny backbone, with the test's interrupting callbacks trusted."""
    return [*soak.overrides(root, epochs=2), TINY_BACKBONE, "trusted_modules=[helpers.interrupt]"]


def metrics_csv(run: Path) -> str:
    return (run / "csv" / "metrics.csv").read_text()


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted")
    train(compose_config("train", overrides(dataset), run))
    return metrics_csv(run)


def as_run(folder: Path, lines: list[str]) -> Path:
    """What Hydra records at a run's start, which makes a folder a run that `ckpt_path=<folder>` continues."""
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(lines))
    return folder


def periodic(steps: int) -> list[str]:
    """The run's mid-epoch last.ckpt every `steps` optimizer steps instead of every 30 minutes."""
    return [f"callbacks.periodic_checkpoint.every_n_train_steps={steps}"]


@pytest.mark.parametrize(
    ("signum", "stop_at", "every"),
    [
        (signal.SIGINT, STEPS_PER_EPOCH + 2, 3),  # Ctrl-C mid-epoch, in the batch of a periodic save
        (signal.SIGTERM, STEPS_PER_EPOCH, 2),  # the first epoch's last batch, with a periodic save in it
    ],
    ids=["SIGINT-mid-epoch-with-a-periodic-save", "SIGTERM-in-the-last-batch-with-a-periodic-save"],
)
def test_a_stop_saves_where_it_lands_and_resumes_exactly(dataset, uninterrupted, tmp_path, signum, stop_at, every):
    """A stop in an epoch's last batch saves there and stops before the epoch's validation (which may take
    minutes); the resumed run validates and ends that epoch as the uninterrupted run did."""
    run_args = overrides(dataset) + periodic(every)
    run = as_run(tmp_path / "run", run_args)
    kill = [
        "+callbacks.interrupt._target_=helpers.interrupt.KillAtStep",
        f"+callbacks.interrupt.step={stop_at}",
        f"+callbacks.interrupt.signum={int(signum)}",
    ]
    with pytest.raises(SystemExit) as stopped:
        train(compose_config("train", run_args + kill, run))
    assert stopped.value.code == 128 + signum  # what a shell shows for a process ended by the signal
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (stop_at // (STEPS_PER_EPOCH + 1), stop_at)
    assert not (run / "metrics.json").exists()  # an unfinished run does not look finished
    for handler in map(signal.getsignal, (signal.SIGTERM, signal.SIGINT)):  # the handlers are given back
        assert not isinstance(getattr(handler, "__self__", None), StopAndSave)

    metrics = train(compose_config("train", run_args + [f"ckpt_path={run}"], run))
    assert metrics_csv(run) == uninterrupted
    assert metrics["train/loss_epoch"] > 0 and "val/mIoU" in metrics


@pytest.mark.parametrize(
    "kill",
    [
        ["+callbacks.interrupt._target_=helpers.interrupt.KillInValidation", "+callbacks.interrupt.epoch=0"],
        [
            "+callbacks.interrupt._target_=helpers.interrupt.KillAtStep",
            f"+callbacks.interrupt.step={STEPS_PER_EPOCH + 1}",
        ],
    ],
    ids=["in-its-validation", "after-its-end-was-logged"],
)
def test_sigkill_after_a_save_in_an_epochs_last_batch_resumes_into_its_validation(
    dataset, uninterrupted, tmp_path, kill
):
    """`last.ckpt` only every 4 steps, in each epoch's last batch (the issue's probe: `every_n_train_steps` on the
    run's own last checkpoint), SIGKILL before or after that epoch's validation and end were logged: the resumed
    run validates and ends the epoch once (Lightning alone took the checkpoint for a finished epoch)."""
    every = [f"+callbacks.last_checkpoint.every_n_train_steps={STEPS_PER_EPOCH}"]
    proc = run_forked(str(ROOT / "train.py"), *overrides(dataset), *every, *kill, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "callbacks.periodic_checkpoint.every_n_train_steps instead" in proc.stdout + proc.stderr  # said once
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (0, STEPS_PER_EPOCH)

    proc = run_entry(str(ROOT / "train.py"), "ckpt_path=last", "++callbacks.interrupt=null", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metrics_csv(run) == uninterrupted
    (record,) = (run / ".hydra").glob("resume-*/resumed_from.yaml")  # where the resume continued from
    assert yaml.safe_load(record.read_text()) == {
        "checkpoint": str(run / "checkpoints" / "last.ckpt"),
        "epoch": 0,
        "global_step": STEPS_PER_EPOCH,
        "batches_of_epoch_done": STEPS_PER_EPOCH,
    }


def test_sigkill_at_an_epoch_boundary_then_last_resumes_exactly(dataset, uninterrupted, tmp_path):
    """SIGKILL (no clean-up) after the second epoch's checkpoints, before its training scores are logged; W&B on."""
    kill = ["+callbacks.interrupt._target_=helpers.interrupt.KillAtEpochEnd", "+callbacks.interrupt.epoch=1"]
    run_args = [("logger=wandb" if o == "logger=csv" else o) for o in overrides(dataset)]
    proc = run_forked(str(ROOT / "train.py"), *run_args, *kill, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    (run / "checkpoints" / ".last.ckpt.tmp-12345").write_bytes(b"half a checkpoint")  # a save that was cut short

    # The run's own overrides come back from its directory; `++...=null` drops the killer.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proc = run_entry(str(ROOT / "train.py"), "ckpt_path=last", "++callbacks.interrupt=null", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]  # its own checkpoints: no warning
    assert list((tmp_path / "logs" / "train" / "runs").iterdir()) == [run]
    assert metrics_csv(run) == uninterrupted  # the whole history, value for value
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")) == []  # cleaned up
    assert len(list((run / ".hydra").glob("resume-*/overrides.yaml"))) == 1  # the first record is kept
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["optimizer_states"][0]["state"][0]["step"] == 2 * STEPS_PER_EPOCH  # AdamW's moments carried across
    wandb_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in wandb_runs}) == 1  # one W&B run id

    summary = yaml.safe_load((run / "metrics.json").read_text())
    assert (summary["epochs"], summary["global_step"]) == (2, 2 * STEPS_PER_EPOCH)
    rows = csv.DictReader(io.StringIO(metrics_csv(run)))
    best_score = max(float(r["val/mIoU"]) for r in rows if r.get("val/mIoU"))
    assert summary["metrics"]["val/mIoU_best"] == pytest.approx(best_score)
    scores = evaluate(compose_config("evaluate", [f"ckpt_path={summary['best_checkpoint']}"], tmp_path / "eval"))
    assert scores["val/mIoU"] == pytest.approx(best_score, abs=1e-6)  # the best checkpoint loads and is the best


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_last_after_an_early_kill_and_a_finished_run_touch_no_run(tmp_path):
    tiny = [
        "logger=csv",
        "test=false",
        "trainer.max_epochs=1",
        "data.num_train=8",
        "data.num_val=4",
        "data.image_size=[32,32]",
        "data.batch_size=4",
        TINY_BACKBONE,
        "trusted_modules=[helpers.interrupt]",
    ]
    proc = run_entry(str(ROOT / "train.py"), "model=fcn", *tiny, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (finished,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    kill = ["+callbacks.interrupt._target_=helpers.interrupt.KillAtStep", "+callbacks.interrupt.step=1"]
    proc = run_forked(str(ROOT / "train.py"), *tiny, *kill, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL  # before its first checkpoint
    runs = set((tmp_path / "logs" / "train" / "runs").iterdir())
    before = {run: tree_digest(run) for run in runs}

    # `last` is the newest run, which has nothing to resume: it says so, and resumes nothing else.
    proc = run_entry(str(ROOT / "train.py"), "ckpt_path=last", cwd=tmp_path)
    assert proc.returncode == 1
    assert "has no checkpoint" in proc.stderr and str(finished) in proc.stderr, proc.stderr[-3000:]
    # The finished run is not resumed: it would train nothing and rewrite its results.
    proc = run_entry(str(ROOT / "train.py"), f"ckpt_path={finished}", cwd=tmp_path)
    assert proc.returncode == 1 and "already finished" in proc.stderr and "trainer.max_epochs=2" in proc.stderr
    assert set((tmp_path / "logs" / "train" / "runs").iterdir()) == runs  # no new run directory either
    assert {run: tree_digest(run) for run in runs} == before

    # Extended, it goes on in place; its summary covers the whole run, not only the second process's epoch.
    proc = run_entry(str(ROOT / "train.py"), f"ckpt_path={finished}", "trainer.max_epochs=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = yaml.safe_load((finished / "metrics.json").read_text())
    assert summary["epochs"] == 2 and summary["resumed_from"].endswith("last.ckpt")
    rows = (finished / "csv" / "metrics.csv").read_text().splitlines()
    assert len([r for r in rows if r.startswith("0,")]) and len([r for r in rows if r.startswith("1,")])
    assert "train/loss_epoch" in summary["metrics"] and "val/mIoU_best" in summary["metrics"]
