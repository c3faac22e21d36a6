"""Where a training run lives, and resuming it in place.

`python train.py ckpt_path=last` (or a checkpoint inside a run directory) continues that run in its own directory,
composed from its own overrides, with its metrics history and W&B run id. Every process of a distributed launch
(torchrun, srun) composes its own config, so run directories are named by what the processes share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import yaml
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, open_dict

from segkit.errors import Refusal
from segkit.moved import moved_override

LAST = "last"
HYDRA_SUBDIR = ".hydra"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"  # what Lightning saves in the run directory before SLURM requeues the job


class ResumeError(Refusal, ValueError):
    """`ckpt_path` names nothing to resume, or a run that already finished."""


@dataclass(frozen=True)
class ResumePlan:
    """What a training process starts from, decided once: the checkpoint whose training state it restores (None:
    a fresh start) and the run it continues in place (None: a new run directory)."""

    checkpoint: Path | None = None
    run: Path | None = None

    @property
    def in_place(self) -> bool:
        return self.run is not None


def is_run(folder: Path) -> bool:
    return (folder / HYDRA_SUBDIR / "overrides.yaml").is_file()


def run_of(checkpoint: Path) -> Path | None:
    """The run that wrote `checkpoint`: `<run>/checkpoints/<file>` (or a SLURM `<run>/hpc_ckpt_<N>.ckpt`)."""
    folder = checkpoint.resolve().parent
    for run in (folder.parent, folder) if folder.name == "checkpoints" else (folder,):
        if is_run(run):
            return run
    return None


def newest_state(run: Path) -> Path | None:
    """The newest training state saved in `run`: `checkpoints/last.ckpt`, or the state Lightning saved before SLURM
    requeued the job (`hpc_ckpt_<N>.ckpt`), whichever was written last."""
    found = [p for p in [run / LAST_CHECKPOINT, *run.glob(HPC_CHECKPOINTS)] if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def runs_newest_first(runs_dir: Path) -> list[Path]:
    """Runs of `runs_dir` by when they started (Hydra writes a run's overrides.yaml once, at its start)."""
    runs = [p for p in runs_dir.iterdir() if is_run(p)] if runs_dir.is_dir() else []
    return sorted(runs, key=lambda p: (p / HYDRA_SUBDIR / "overrides.yaml").stat().st_mtime, reverse=True)


def plan(runs_dir: str | Path, ckpt_path: str | None) -> ResumePlan:
    """What `ckpt_path` means (see conf/train.yaml):
    - null: a new run; except that a distributed launch restarted under the same name (a SLURM requeue, a torchrun
      restart) continues its own directory from the newest state saved there;
    - `last`: the newest run of `runs_dir`, continued in place from its `checkpoints/last.ckpt`; when that run has
      none (it stopped before its first checkpoint), an error listing the runs that have one: never an older run
      by surprise;
    - a run directory: that run, continued from its last.ckpt;
    - a checkpoint file inside a run: that run, continued in place from that file; elsewhere: a new run that
      starts from the file's training state."""
    runs_dir = Path(runs_dir)
    if not ckpt_path:
        launch = launch_name()
        run = runs_dir / launch if launch else None
        state = newest_state(run) if run is not None and is_run(run) else None
        return ResumePlan(state, run.resolve()) if state else ResumePlan()
    if str(ckpt_path) == LAST:
        runs = runs_newest_first(runs_dir)
        if not runs:
            raise ResumeError(
                f"ckpt_path=last: there is no run under {runs_dir}. Fix: start one, or pass "
                "ckpt_path=<run directory or .ckpt file>."
            )
        newest, state = runs[0], newest_state(runs[0])
        if state is None:
            others = [f"  {r}" for r in runs[1:] if (r / LAST_CHECKPOINT).is_file()][:5]
            listed = ("\nRuns that have one, newest first:\n" + "\n".join(others)) if others else ""
            raise ResumeError(
                f"ckpt_path=last: the newest run, {newest}, has no checkpoint (it stopped before its first one was "
                f"written), and no other run is resumed in its place.{listed}\nFix: pass ckpt_path=<one of these "
                "runs> to continue it, or start afresh without ckpt_path."
            )
        return ResumePlan(state, newest.resolve())
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        state = newest_state(path) if is_run(path) else None
        if state is None:
            raise ResumeError(
                f"ckpt_path={ckpt_path}: not a run directory with {LAST_CHECKPOINT}. Fix: pass a run "
                f"directory (under {runs_dir}) or a .ckpt file."
            )
        return ResumePlan(state, path.resolve())
    if not path.is_file():
        raise ResumeError(
            f"ckpt_path={ckpt_path}: no such checkpoint file. Fix: pass ckpt_path=last, a run "
            "directory, or an existing .ckpt file."
        )
    return ResumePlan(path, run_of(path))


def check_not_finished(resume: ResumePlan, max_epochs: int | None, max_steps: int | None) -> None:
    """Resuming a run that finished (its metrics.json is written last) would train nothing and rewrite its
    results: refuse, and say how to extend it instead."""
    if not resume.in_place or not (resume.run / "metrics.json").is_file():
        return
    import torch  # here: the entry scripts' config checks run before torch loads

    state = torch.load(resume.checkpoint, map_location="cpu", weights_only=True, mmap=True)
    epochs_done, steps_done = int(state["epoch"]) + 1, int(state["global_step"])
    by_epochs = max_epochs is not None and max_epochs >= 0 and epochs_done >= max_epochs
    by_steps = max_steps is not None and max_steps > 0 and steps_done >= max_steps
    if by_epochs or by_steps:
        raise ResumeError(
            f"The run {resume.run} already finished ({epochs_done} epochs, {steps_done} steps; see its metrics.json); "
            f"resuming it would train nothing, so it is left as it is. Fix: to train it further, extend it, e.g. "
            f"`python train.py ckpt_path={resume.run} trainer.max_epochs={epochs_done * 2}`; to score it, run "
            f"evaluate.py on its checkpoints."
        )


def limits(run: Path, overrides: Sequence[str]) -> tuple[int | None, int | None]:
    """(max_epochs, max_steps) a resume of `run` will have: this command's overrides, else the run's config."""
    found: dict[str, int | None] = {}
    config = run / "config.yaml"
    if config.is_file():
        trainer = (yaml.safe_load(config.read_text()) or {}).get("trainer") or {}
        found = {k: trainer.get(k) for k in ("max_epochs", "max_steps")}
    for override in overrides:
        key, _, value = str(override).lstrip("+").partition("=")
        if key in ("trainer.max_epochs", "trainer.max_steps"):
            found[key.split(".")[1]] = None if value in ("null", "") else int(value)
    return found.get("max_epochs"), found.get("max_steps")


_PLANS: dict[Path, ResumePlan] = {}  # by run directory: Hydra's resolvers decide, the task reads


def plan_of_run(output_dir: str | Path, runs_dir: str | Path, ckpt_path: str | None) -> ResumePlan:
    """The plan the run-directory resolver made for `output_dir` in this process, or (a task called without
    Hydra's run directory, as tests do) a fresh one."""
    made = _PLANS.get(Path(output_dir).resolve())
    return made if made is not None else plan(runs_dir, ckpt_path)


@lru_cache(maxsize=16)
def _job_plan(runs_dir: str, ckpt_path: str | None, stamp: str, overrides: tuple[str, ...]) -> tuple[ResumePlan, str]:
    """The plan and run directory of one Hydra job (the stamp is the job's own), decided once."""
    resume = plan(runs_dir, ckpt_path)
    if resume.in_place:
        check_not_finished(resume, *limits(resume.run, overrides))
    directory = str(resume.run) if resume.in_place else f"{runs_dir}/{launch_name() or stamp}"
    _PLANS[Path(directory).resolve()] = resume
    return resume, directory


def run_dir(runs_dir: str, ckpt_path: str | None, stamp: str, overrides: Sequence[str] = ()) -> str:
    """Resolver for `hydra.run.dir`: the resumed run's own directory, else a new one. A refused resume fails here,
    before Hydra writes anything."""
    return _job_plan(runs_dir, ckpt_path, stamp, tuple(map(str, overrides)))[1]


def hydra_subdir(runs_dir: str, ckpt_path: str | None, stamp: str, overrides: Sequence[str] = ()) -> str | None:
    """Resolver for `hydra.output_subdir`: a resume keeps the run's original record and adds its own beside it;
    only the first process of a distributed launch writes one."""
    if process_rank() > 0:
        return None
    resume, _ = _job_plan(runs_dir, ckpt_path, stamp, tuple(map(str, overrides)))
    return f"{HYDRA_SUBDIR}/resume-{stamp}" if resume.in_place else HYDRA_SUBDIR


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
    if "SLURM_JOB_ID" not in env:
        return None
    step = env.get("SLURM_STEP_ID")
    # One task: an `srun` step of a batch job, which a requeue runs again under the same job and step ids. Not an
    # interactive allocation's (Lightning's own test: the job's name), nor the batch script's own process, where
    # several runs in turn would share the name.
    batch_step = step is not None and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")
    if int(env.get("SLURM_NTASKS", "1")) > 1 or batch_step:
        return f"slurm-{env['SLURM_JOB_ID']}" + (f".{step}" if step else "")
    return None


def process_start_time(pid: int) -> datetime | None:
    """When process `pid` started (Linux /proc), identical for every process that asks."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
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
            overrides += [moved_override(o) for o in yaml.safe_load(record.read_text()) or []]  # old addresses
    return overrides


def merge_repeats(overrides: Sequence[str]) -> list[str]:
    """A run's recorded overrides then a resume's, where repeating the run's own command changes nothing: the
    user who presses the up arrow and appends `ckpt_path=last` repeats every override the run was started with, any
    number of resumes in a row. Hydra would refuse a second `+key=value` ("An item is already at ..."), so a
    `+key=value` whose key an earlier override added becomes `key=value`, an override of it (a value or a config
    group alike), and an override equal to the latest one of its key is dropped, a no-op."""
    merged: list[str] = []
    latest: dict[str, str] = {}  # key (with @package) -> the last override of it kept
    added: set[str] = set()  # keys an earlier `+` or `++` put into the config, not deleted since
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group + (f"@{override.package}" if override.package is not None else "")
        text = str(override.input_line)
        if latest.get(key) == text.lstrip("+"):  # `+k=1`, `++k=1` and `k=1` set the same value
            continue
        if override.is_add() and key in added:
            text = text[1:]
        if override.is_delete():
            added.discard(key)
        elif override.is_add() or override.is_force_add():
            added.add(key)
        merged.append(text)
        latest[key] = text.lstrip("+")
    return merged


def resumed_config(cfg: DictConfig) -> DictConfig:
    """In an entry script: when this run resumes one in place, the config that run was composed from, with this
    command's overrides applied last (`python train.py ckpt_path=last` needs no repeat of the first command)."""
    hydra_cfg = HydraConfig.get()
    run = Path(hydra_cfg.runtime.output_dir).resolve()
    if not plan_of_run(run, cfg.paths.runs_dir, cfg.get("ckpt_path")).in_place:
        return cfg
    own_record = run / hydra_cfg.output_subdir if hydra_cfg.output_subdir else None
    overrides = merge_repeats(recorded_overrides(run, skip=own_record) + list(hydra_cfg.overrides.task))
    resumed = compose(config_name=hydra_cfg.job.config_name, overrides=overrides)
    # Trust is this command's to give (segkit.config.trust): a run directory's records never grant it.
    with open_dict(resumed):
        resumed.trusted_modules = cfg.get("trusted_modules") or []
    return resumed


def wandb_run_id(run: Path) -> str | None:
    """The id of the W&B run logged in `run` (W&B names its folders `[offline-]run-<time>-<id>`)."""
    folders = sorted((run / "wandb").glob("*run-*-*"), key=lambda p: p.name.split("run-", 1)[1])
    return folders[-1].name.rsplit("-", 1)[1] if folders else None
