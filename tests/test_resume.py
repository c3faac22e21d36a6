"""Finding what to resume and where a run lives, without training (the end-to-end kill test is in test_train)."""

import os
import time

import pytest
import yaml

from segkit import resume


def make_run(runs_dir, name, overrides=(), checkpoint=True):
    run = runs_dir / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    if checkpoint:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"state")
    return run


def test_last_is_the_newest_last_checkpoint_and_resumes_in_its_run(tmp_path):
    old = make_run(tmp_path, "a")
    new = make_run(tmp_path, "b")
    make_run(tmp_path, "c", checkpoint=False)  # a run that died before its first checkpoint
    past = time.time() - 60
    os.utime(old / "checkpoints" / "last.ckpt", (past, past))
    assert resume.find_checkpoint("last", tmp_path) == new / "checkpoints" / "last.ckpt"
    assert resume.run_dir(str(tmp_path), "last", "stamp") == str(new.resolve())
    assert resume.hydra_subdir(str(tmp_path), "last", "stamp") == ".hydra/resume-stamp"
    # A checkpoint outside any run directory starts a new run.
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes(b"state")
    assert resume.run_dir(str(tmp_path), str(loose), "stamp") == f"{tmp_path}/stamp"
    assert resume.hydra_subdir(str(tmp_path), None, "stamp") == ".hydra"


def test_missing_checkpoints_are_named_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run under .* has checkpoints/last.ckpt"):
        resume.find_checkpoint("last", tmp_path)
    with pytest.raises(FileNotFoundError, match="gone.ckpt: no such checkpoint"):
        resume.find_checkpoint(str(tmp_path / "gone.ckpt"), tmp_path)
    assert resume.run_dir(str(tmp_path), "last", "stamp") == f"{tmp_path}/stamp"  # the task reports it


def test_overrides_of_the_first_launch_then_each_resume_in_order(tmp_path):
    run = make_run(tmp_path, "run", ["model=fcn", "trainer.max_epochs=4"])
    for stamp, overrides in [("2026-01-02", ["ckpt_path=last", "trainer.max_epochs=9"]), ("2026-01-01", ["x=1"])]:
        (run / ".hydra" / f"resume-{stamp}").mkdir()
        (run / ".hydra" / f"resume-{stamp}" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    assert resume.recorded_overrides(run) == [
        "model=fcn", "trainer.max_epochs=4", "x=1", "ckpt_path=last", "trainer.max_epochs=9"]
    assert resume.recorded_overrides(run, skip=run / ".hydra" / "resume-2026-01-02")[-1] == "x=1"


def test_wandb_run_id_is_read_from_the_run_directory(tmp_path):
    assert resume.wandb_run_id(tmp_path) is None
    (tmp_path / "wandb" / "offline-run-20261124_101010-abc123").mkdir(parents=True)
    (tmp_path / "wandb" / "run-20261124_111111-abc123").mkdir()
    assert resume.wandb_run_id(tmp_path) == "abc123"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"TORCHELASTIC_RUN_ID": "job42", "WORLD_SIZE": "8"}, "torchrun-job42"),
        ({"SLURM_JOB_ID": "777", "SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}, "slurm-777.0"),
        ({"SLURM_JOB_ID": "777", "SLURM_NTASKS": "1"}, None),  # one task (salloc, sbatch): an ordinary run
    ],
)
def test_processes_of_one_launch_agree_on_a_directory_name(monkeypatch, env, expected):
    for key in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_ID", "RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert resume.launch_name() == expected


def test_static_torchrun_names_the_directory_after_its_agent(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("WORLD_SIZE", "2")
    name = resume.launch_name()
    assert name.endswith(f"-torchrun{os.getppid()}") and name == resume.launch_name()
    monkeypatch.setenv("RANK", "1")
    assert resume.hydra_subdir("/nowhere", None, "stamp") is None  # only rank 0 writes Hydra's record


def test_a_requeued_job_resumes_from_the_newest_state_lightning_saved(tmp_path):
    assert resume.requeued_checkpoint(tmp_path) is None
    for n in (1, 2, 10):
        (tmp_path / f"hpc_ckpt_{n}.ckpt").write_bytes(b"state")
    (tmp_path / "hpc_ckpt_x.ckpt").write_bytes(b"not Lightning's")
    assert resume.requeued_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_10.ckpt"  # by number, not by name
