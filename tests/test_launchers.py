"""The submitit launchers (conf/hydra/launcher/): the SLURM job they ask for, and the local one for real.

There is no SLURM here: the SLURM side is checked up to the sbatch script submitit would submit, plus the
requeue path of a job (SLURM's signal, Lightning's checkpoint and `scontrol requeue`, the resumed run) with
SLURM's environment variables and a fake `scontrol`.
"""

import json
import os
import pickle
import signal
import stat
import warnings
from pathlib import Path

import lightning as L
import pytest
import submitit
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationValidationError

from conftest import ROOT, TINY_BACKBONE, TINY_DATA, compose_with_hydra, run_forked
from segkit.tasks.train import train

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
LOCAL_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


def launcher_params(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def sbatch_script(cfg: DictConfig, monkeypatch) -> str:
    """The sbatch script the configured launcher would submit: its own launch(), stopped at submission."""
    executors = []

    class Captured(Exception):
        pass

    class CapturingExecutor(submitit.AutoExecutor):
        def map_array(self, *args, **kwargs):
            executors.append(self)
            raise Captured

    monkeypatch.setattr(submitit, "AutoExecutor", CapturingExecutor)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # "srun is here"
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda cfg: None, config=cfg)
    with pytest.raises(Captured):
        launcher.launch([["seed=1"]], initial_job_idx=0)
    (executor,) = executors
    return executor._executor._make_submission_file_text("python -m submitit.core._submit FOLDER", "uid")


def slurm_env(params: dict, job_id: str = "4242", task: int = 0) -> dict[str, str]:
    """The variables srun gives rank 0 of a job of this shape (SLURM's names; one array task of a sweep)."""
    nodes, per_node = params["nodes"], params["tasks_per_node"]
    return {
        "SLURM_JOB_ID": str(int(job_id) + 1 + task),
        "SLURM_ARRAY_JOB_ID": job_id,
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_JOB_NAME": params["name"],
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NTASKS": str(nodes * per_node),
        "SLURM_NTASKS_PER_NODE": str(per_node),
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }


def test_slurm_launcher_asks_for_a_job_lightning_ddp_can_run_in(tmp_path, monkeypatch):
    cfg = compose_with_hydra(
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.launcher.partition=gpu",
    )
    assert cfg.hydra.launcher._target_ == SLURM_LAUNCHER
    params = launcher_params(cfg)
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    assert params["submitit_folder"] == f"{tmp_path / 'sweep'}/.submitit/%j"
    assert params["name"] == "train" and params["partition"] == "gpu"
    assert params["additional_parameters"] == {"signal": f"USR1@{params['signal_delay_s']}", "requeue": True}

    # What goes to SLURM: the plugin's own launch(), stopped where submitit would call sbatch.
    script = sbatch_script(cfg, monkeypatch)
    flags = {line for line in script.splitlines() if line.startswith("#SBATCH")}
    for flag in [
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--cpus-per-task=8",
        "--mem=64GB",
        "--time=1440",
        "--partition=gpu",
        "--job-name=train",
        "--requeue",
        "--signal=USR1@120",
    ]:
        assert f"#SBATCH {flag}" in flags, (flag, script)
    assert "USR2" not in script  # submitit's own signal is replaced: only Lightning's handler is ever called
    assert f"--output={tmp_path / 'sweep'}/.submitit/%j/%j_0_log.out" in script
    assert "\nsrun " in script  # each task is started by srun: Lightning's SLURMEnvironment sees it

    # Lightning, in a task of that job, takes the ranks from SLURM and agrees with the trainer's shape.
    for key, value in slurm_env(params).items():
        monkeypatch.setenv(key, value)
    assert SLURMEnvironment.detect()
    env = SLURMEnvironment()
    env.validate_settings(num_devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes)
    assert env.world_size() == 8
    with pytest.raises(ValueError, match="ntasks-per-node=4"):
        env.validate_settings(num_devices=2, num_nodes=2)


def test_slurm_launcher_needs_a_device_count_when_the_trainer_has_devices_auto():
    cfg = compose_with_hydra("hydra/launcher=slurm", "trainer=ddp")
    assert cfg.trainer.devices == "auto"
    with pytest.raises(InterpolationValidationError, match="auto") as error:
        launcher_params(cfg)
    assert "hydra.launcher.tasks_per_node" in str(error.value)  # names the key to set
    # The one key to set: tasks and GPUs per node follow it, `auto` then sees those GPUs.
    cfg = compose_with_hydra("hydra/launcher=slurm", "trainer=ddp", "hydra.launcher.tasks_per_node=8")
    params = launcher_params(cfg)
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (1, 8, 8)
    # The default trainer (one device): one GPU, one task per job, the shape of a plain sweep.
    params = launcher_params(compose_with_hydra("hydra/launcher=slurm"))
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (1, 1, 1)


class SignalAtStep(L.Callback):
    """Sends this process `signame` after training step `step`: SLURM's `--signal` before the time limit."""

    starts: list[int] = []

    def __init__(self, signame: str | None = None, step: int = 1):
        self.signame, self.step, self.sent = signame, step, False

    def on_train_start(self, trainer, pl_module):
        SignalAtStep.starts.append(trainer.global_step)

    def on_train_batch_end(self, trainer, *args):
        if self.signame and not self.sent and trainer.global_step == self.step:
            self.sent = True
            os.kill(os.getpid(), getattr(signal, f"SIG{self.signame}"))


@pytest.fixture
def restore_signal_handlers():
    signums = [signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGCONT]
    saved = {s: signal.getsignal(s) for s in signums}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.slow
def test_time_limit_signal_checkpoints_requeues_and_the_requeued_job_resumes(
    tiny_train_cfg, tmp_path, monkeypatch, restore_signal_handlers
):
    launcher = launcher_params(compose_with_hydra("hydra/launcher=slurm"))
    signame = launcher["additional_parameters"]["signal"].split("@")[0]  # what SLURM will send
    # A fake scontrol that records its arguments.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.txt"}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in slurm_env(launcher, job_id="4242", task=3).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    # submitit's job process installs its handlers (SIGUSR2: checkpoint + requeue, SIGTERM: ignored) first.
    job_paths = submitit.core.utils.JobPaths(tmp_path / "submitit" / "%j", job_id="4242_3")
    submitit.JobEnvironment()._handle_signals(job_paths, submitit.helpers.DelayedSubmission(print))

    SignalAtStep.starts.clear()
    probe = f"+callbacks.probe._target_={__name__}.SignalAtStep"
    trust = f"trusted_modules=[{__name__}]"
    run_dir = tmp_path / "run"
    quick = ["+trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", TINY_BACKBONE]  # 1 epoch of 2 steps
    first = tiny_train_cfg(*quick, probe, trust, f"+callbacks.probe.signame={signame}", output_dir=run_dir)
    train(first)
    # Lightning handled it: a full training state beside the run, and this array task requeued.
    assert (run_dir / "hpc_ckpt_1.ckpt").is_file()
    assert (tmp_path / "scontrol.txt").read_text().split() == ["requeue", "4242_3"]

    # The requeued job: the same job again, same run directory, no ckpt_path; Lightning picks the hpc checkpoint.
    second = tiny_train_cfg(*quick, probe, trust, output_dir=run_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(second)
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]  # its own checkpoints
    assert SignalAtStep.starts == [0, 1]  # resumed at the step the signal came, not from scratch
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 2  # 1 restored + 1 more


@pytest.mark.slow
def test_local_launcher_runs_a_sweep_job_through_submitit(tmp_path):
    proc = run_forked(
        str(ROOT / "train.py"),
        "-m",
        "hydra/launcher=local",
        "debug=fast",
        "logger=csv",
        "seed=7",
        *TINY_DATA,
        TINY_BACKBONE,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr
    job_dir = sweep_dir / "0"
    assert (job_dir / "metrics.json").is_file()
    assert "seed=7" in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")
    # It ran in a process of its own, started by submitit: its pickles and logs are in the sweep directory.
    (result,) = (sweep_dir / ".submitit").glob("*/*_0_result.pkl")
    job_id = result.parent.name
    assert job_id.isdigit()  # the pid of the job's process
    assert (result.parent / f"{job_id}_submitted.pkl").is_file()
    log = (result.parent / f"{job_id}_0_log.out").read_text() + (result.parent / f"{job_id}_0_log.err").read_text()
    assert f"Starting with JobEnvironment(job_id={job_id}" in log and "Job completed successfully" in log
    outcome, value = pickle.loads(result.read_bytes())
    assert outcome == "success"
    assert value.status.name == "COMPLETED" and value.return_value is not None
    assert Path(value.hydra_cfg.hydra.runtime.output_dir) == job_dir  # its own run directory, in the sweep's
