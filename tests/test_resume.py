"""Finding what to resume and where a run lives, without training (end-to-end kills: test_exact_resume)."""

import os
import time

import pytest
import torch
import yaml

from segkit.runs import resume


def make_run(runs_dir, name, overrides=(), checkpoint=True):
    run = runs_dir / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    if checkpoint:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"state")
    return run


def started(run, seconds_ago):
    """Back-date a run's start (Hydra writes .hydra/overrides.yaml once, when the run starts)."""
    when = time.time() - seconds_ago
    os.utime(run / ".hydra" / "overrides.yaml", (when, when))


def test_last_is_the_newest_run_continued_in_its_own_directory(tmp_path):
    old, new = make_run(tmp_path, "b-old"), make_run(tmp_path, "a-new")  # names do not decide, start times do
    started(old, 60)
    plan = resume.plan(tmp_path, "last")
    assert plan == resume.ResumePlan(new / "checkpoints" / "last.ckpt", new.resolve()) and plan.in_place
    assert resume.run_dir(str(tmp_path), "last", "stamp") == str(new.resolve())
    assert resume.hydra_subdir(str(tmp_path), "last", "stamp") == ".hydra/resume-stamp"
    # A run directory, or a checkpoint inside a run, names that run.
    assert resume.plan(tmp_path, str(old)).run == old.resolve()
    assert resume.plan(tmp_path, str(old / "checkpoints" / "last.ckpt")).run == old.resolve()
    # A checkpoint outside any run starts a new run from its training state.
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes(b"state")
    assert resume.plan(tmp_path, str(loose)) == resume.ResumePlan(loose, None)
    assert resume.run_dir(str(tmp_path), str(loose), "stamp2") == f"{tmp_path}/stamp2"
    assert resume.hydra_subdir(str(tmp_path), None, "stamp3") == ".hydra"


def test_last_never_falls_back_to_an_older_run(tmp_path):
    older = make_run(tmp_path, "older")
    started(older, 60)
    make_run(tmp_path, "killed-early", checkpoint=False)  # died before its first checkpoint
    with pytest.raises(resume.ResumeError, match=r"(?s)newest run, .*killed-early, has no checkpoint.*older"):
        resume.plan(tmp_path, "last")
    with pytest.raises(resume.ResumeError, match="killed-early"):  # in the resolver: before Hydra writes anything
        resume.run_dir(str(tmp_path), "last", "stamp")


def test_missing_checkpoints_are_named_with_the_fix(tmp_path):
    with pytest.raises(resume.ResumeError, match="there is no run under"):
        resume.plan(tmp_path, "last")
    with pytest.raises(resume.ResumeError, match="gone.ckpt: no such checkpoint file. Fix"):
        resume.plan(tmp_path, str(tmp_path / "gone.ckpt"))
    with pytest.raises(resume.ResumeError, match="not a run directory"):
        resume.plan(tmp_path, str(tmp_path))


def test_a_finished_run_is_left_alone_unless_extended(tmp_path):
    run = make_run(tmp_path, "done", ["trainer.max_epochs=4"])
    torch.save({"epoch": 3, "global_step": 8}, run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": 4, "max_steps": -1}}))
    plan = resume.plan(tmp_path, "last")
    resume.check_not_finished(plan, 4, -1)  # no metrics.json yet: killed after its last checkpoint, so resumable
    (run / "metrics.json").write_text("{}")
    with pytest.raises(resume.ResumeError, match=r"already finished \(4 epochs, 8 steps.*trainer.max_epochs=8"):
        resume.check_not_finished(plan, *resume.limits(run, ["ckpt_path=last"]))
    resume.check_not_finished(plan, *resume.limits(run, ["ckpt_path=last", "trainer.max_epochs=6"]))  # extends
    with pytest.raises(resume.ResumeError, match="already finished"):
        resume.check_not_finished(plan, 8, 8)  # a step budget spent


def test_overrides_of_the_first_launch_then_each_resume_in_order(tmp_path):
    run = make_run(tmp_path, "run", ["model=fcn", "trainer.max_epochs=4"])
    for stamp, overrides in [("2026-01-02", ["ckpt_path=last", "trainer.max_epochs=9"]), ("2026-01-01", ["x=1"])]:
        (run / ".hydra" / f"resume-{stamp}").mkdir()
        (run / ".hydra" / f"resume-{stamp}" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    assert resume.recorded_overrides(run) == [
        "model=fcn",
        "trainer.max_epochs=4",
        "x=1",
        "ckpt_path=last",
        "trainer.max_epochs=9",
    ]
    assert resume.recorded_overrides(run, skip=run / ".hydra" / "resume-2026-01-02")[-1] == "x=1"


def test_repeats_of_a_runs_own_overrides_change_nothing():
    """A `+key=value` whose key an earlier override added becomes an override of it (Hydra refuses to add a key
    twice), and an override equal to the latest of its key is dropped: for values and config groups alike."""
    first = ["model=fcn", "+trainer.limit_train_batches=12", "+optimizer@extra=adamw", "trainer.max_epochs=3"]
    assert resume.merge_repeats(first + first + ["ckpt_path=last"] + first + ["ckpt_path=last"]) == first + [
        "ckpt_path=last"
    ]
    changed = ["+trainer.limit_train_batches=6", "+optimizer@extra=sgd", "++trainer.max_epochs=3", "model=unet"]
    assert resume.merge_repeats(first + changed) == first + [
        "trainer.limit_train_batches=6",
        "optimizer@extra=sgd",
        "model=unet",
    ]
    # What was deleted since can be added again.
    assert resume.merge_repeats(["+a=1", "~a", "+a=1"]) == ["+a=1", "~a", "+a=1"]


def test_the_first_command_repeated_with_ckpt_path_last_resumes_three_times_in_a_row(tmp_path, monkeypatch):
    """The up arrow and `ckpt_path=last` appended, resume after resume: the run's recorded overrides and the repeated
    ones compose (before, the first resume stopped with "Could not append to config. An item is already at
    'trainer.limit_train_batches'"). The third changes the value it added: an override of it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from conftest import CONF
    from segkit.config.hydra_setup import register_resolvers

    register_resolvers()
    monkeypatch.chdir(tmp_path)  # runs go under ./logs
    first = ["model=fcn", "+trainer.limit_train_batches=12", "trainer.max_epochs=3", "+optimizer@extra=sgd"]
    run = make_run(tmp_path / "logs" / "train" / "runs", "2026-01-01_00-00-00-000000", first)
    commands = [first + ["ckpt_path=last"]] * 2 + [
        [*first[:1], "+trainer.limit_train_batches=6", *first[2:], "ckpt_path=last"]
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="train"):
        for number, command in enumerate(commands, 1):
            cfg = compose(config_name="train", overrides=command, return_hydra_config=True)
            record = run / ".hydra" / f"resume-2026-01-0{number}"  # what Hydra writes for this resume
            record.mkdir()
            (record / "overrides.yaml").write_text(yaml.safe_dump(command))
            with open_dict(cfg):
                cfg.hydra.runtime.output_dir, cfg.hydra.output_subdir = str(run), str(record.relative_to(run))
            HydraConfig().set_config(cfg)
            resumed = resume.resumed_config(cfg)
            assert resumed.model._target_.endswith("FCN") and resumed.trainer.max_epochs == 3, number
            assert resumed.trainer.limit_train_batches == (6 if number == 3 else 12), number
            assert resumed.extra._target_ == "torch.optim.SGD", number


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
        # One task: an srun step of a batch job is requeued under the same name; an interactive allocation's
        # step or the batch script's own process is an ordinary run.
        ({"SLURM_JOB_ID": "777", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "2", "SLURM_JOB_NAME": "seg"}, "slurm-777.2"),
        ({"SLURM_JOB_ID": "777", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "bash"}, None),
        ({"SLURM_JOB_ID": "777", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "seg"}, None),
    ],
)
def test_processes_of_one_launch_agree_on_a_directory_name(monkeypatch, env, expected):
    for key in (
        "TORCHELASTIC_RUN_ID",
        "WORLD_SIZE",
        "SLURM_JOB_ID",
        "SLURM_NTASKS",
        "SLURM_STEP_ID",
        "SLURM_JOB_NAME",
        "RANK",
    ):
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


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SLURM_NTASKS": "2"}, "slurm-4242"),  # the tasks of a multi-GPU job
        ({"SLURM_NTASKS": "1", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "seg"}, "slurm-4242.0"),  # a one-GPU job
    ],
)
def test_a_restarted_launch_continues_its_own_directory_from_its_newest_state(tmp_path, monkeypatch, env, name):
    for key in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK", "SLURM_STEP_ID", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert resume.plan(tmp_path, None) == resume.ResumePlan()  # first start
    run = make_run(tmp_path, name)
    (run / "hpc_ckpt_3.ckpt").write_bytes(b"state")  # what Lightning saved before SLURM requeued the job
    past = time.time() - 60
    os.utime(run / "checkpoints" / "last.ckpt", (past, past))
    assert resume.plan(tmp_path, None) == resume.ResumePlan(run / "hpc_ckpt_3.ckpt", run.resolve())
    os.utime(run / "checkpoints" / "last.ckpt")  # a stop saved after it: the newest state wins
    assert resume.plan(tmp_path, None).checkpoint == run / "checkpoints" / "last.ckpt"


def test_a_corrupt_checkpoint_is_named_before_anything_is_written(tiny_train_cfg, tmp_path):
    from segkit.runs.checkpoints import CheckpointError
    from segkit.tasks.train import train

    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(b"PK\x03\x04 the first bytes of a checkpoint, cut short")
    with pytest.raises(CheckpointError, match=r"cut.ckpt\" cannot be read.*truncated"):
        train(tiny_train_cfg(f"ckpt_path={bad}", output_dir=tmp_path / "run"))
    assert not (tmp_path / "run").exists()
