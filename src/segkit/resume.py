"""Where a training run lives, and resuming it in place.

`python train.py ckpt_path=last` (or a checkpoint inside a run directory) continues that run in its own directory,
composed from its own overrides, with its metrics history and W&B run id. Every process of a distributed launch
(torchrun, srun) composes its own config, so run directories are named by what the processes share.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import yaml
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

LAST = "last"
HYDRA_SUBDIR = ".hydra"


def find_checkpoint(ckpt_path: str | None, runs_dir: str | Path) -> Path | None:
    """The checkpoint `ckpt_path` names: `last` is the newest `checkpoints/last.ckpt` of the runs in `runs_dir`."""
    if not ckpt_path:
        return None
    if str(ckpt_path) == LAST:
        found = sorted(Path(runs_dir).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(
                f"ckpt_path=last: no run under {runs_dir} has checkpoints/last.ckpt. "
                "Start a run first, or pass ckpt_path=<path to a .ckpt file>."
            )
        return found[-1]
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file.")
    return path


def requeued_checkpoint(run: Path) -> Path | None:
    """The state Lightning saved in `run` before SLURM requeued the job (`hpc_ckpt_<N>.ckpt`, highest N)."""
    numbers = {p: p.stem.removeprefix("hpc_ckpt_") for p in run.glob("hpc_ckpt_*.ckpt")}
    saved = [(int(n), p) for p, n in numbers.items() if n.isdigit()]
    return max(saved)[1] if saved else None


def resumes_in_place(checkpoint: Path | None, run: Path) -> bool:
    """Whether training from `checkpoint` continues the run in `run` (the checkpoint is one of its own)."""
    return checkpoint is not None and Path(run).resolve() in checkpoint.resolve().parents


def run_dir_of(checkpoint: Path | None) -> Path | None:
    """The run that wrote `checkpoint` (`<run>/checkpoints/<file>`, with Hydra's record in `<run>/.hydra`)."""
    if checkpoint is None:
        return None
    folder = checkpoint.resolve().parent
    run = folder.parent
    return run if folder.name == "checkpoints" and (run / HYDRA_SUBDIR / "overrides.yaml").is_file() else None


def resumed_run(runs_dir: str, ckpt_path: str | None) -> Path | None:
    try:
        return run_dir_of(find_checkpoint(ckpt_path, runs_dir))
    except FileNotFoundError:
        return None  # a new directory; the task reports the missing checkpoint with its fix


def run_dir(runs_dir: str, ckpt_path: str | None, stamp: str) -> str:
    """Resolver for `hydra.run.dir`: the resumed run's own directory, else a new one."""
    resumed = resumed_run(runs_dir, ckpt_path)
    return str(resumed) if resumed else f"{runs_dir}/{launch_name() or stamp}"


def hydra_subdir(runs_dir: str, ckpt_path: str | None, stamp: str) -> str | None:
    """Resolver for `hydra.output_subdir`: a resume keeps the run's original record and adds its own beside it;
    only the first process of a distributed launch writes one."""
    if process_rank() > 0:
        return None
    if resumed_run(runs_dir, ckpt_path):
        return f"{HYDRA_SUBDIR}/resume-{stamp}"
    return HYDRA_SUBDIR


def process_rank() -> int:
    """This process's rank in a torchrun or srun launch (0 when alone)."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def launch_name() -> str | None:
    """A directory name all processes of one distributed launch agree on, or None for a single process."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1")) > 1:
        if env["TORCHELASTIC_RUN_ID"] not in ("", "none"):  # --rdzv-id, or --standalone's random id
            return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
        # Static rendezvous: the processes of one node share their parent, torchrun's agent.
        started = process_start_time(os.getppid())
        return f"{started:%Y-%m-%d_%H-%M-%S}-torchrun{os.getppid()}" if started else None
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        step = env.get("SLURM_STEP_ID")
        return f"slurm-{env['SLURM_JOB_ID']}" + (f".{step}" if step else "")
    return None


def process_start_time(pid: int) -> datetime | None:
    """When process `pid` started (Linux /proc), identical for every process that asks."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"))


def recorded_overrides(run: Path, skip: Path | None = None) -> list[str]:
    """The command-line overrides that made `run`: its first launch's, then each resume's, in order."""
    records = [run / HYDRA_SUBDIR / "overrides.yaml"]
    records += sorted((run / HYDRA_SUBDIR).glob("resume-*/overrides.yaml"))
    overrides: list[str] = []
    for record in records:
        if record.parent != skip:
            overrides += yaml.safe_load(record.read_text()) or []
    return overrides


def resumed_config(cfg: DictConfig) -> DictConfig:
    """In an entry script: when this run resumes one in place, the config that run was composed from, with this
    command's overrides applied last (`python train.py ckpt_path=last` needs no repeat of the first command)."""
    hydra_cfg = HydraConfig.get()
    run = Path(hydra_cfg.runtime.output_dir).resolve()
    if not resumes_in_place(find_checkpoint(cfg.get("ckpt_path"), cfg.paths.runs_dir), run):
        return cfg
    own_record = run / hydra_cfg.output_subdir if hydra_cfg.output_subdir else None
    overrides = recorded_overrides(run, skip=own_record) + list(hydra_cfg.overrides.task)
    return compose(config_name=hydra_cfg.job.config_name, overrides=overrides)


def wandb_run_id(run: Path) -> str | None:
    """The id of the W&B run logged in `run` (W&B names its folders `[offline-]run-<time>-<id>`)."""
    folders = sorted((run / "wandb").glob("*run-*-*"), key=lambda p: p.name.split("run-", 1)[1])
    return folders[-1].name.rsplit("-", 1)[1] if folders else None
