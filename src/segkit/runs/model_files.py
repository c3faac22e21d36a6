"""Which checkpoint files a scoring command's `ckpt_path` names (evaluate.py, predict.py): a file, a run directory,
a sweep (multirun) directory, or a list of these. Several files are an ensemble (segkit.training.ensemble).

A run directory gives the checkpoint that train.py's test after fitting scores: its best (`checkpoints/best-*.ckpt`,
weights only, the best val/mIoU), or its `last.ckpt` when it has none. A sweep directory gives that of each job
(`<sweep>/0/`, `<sweep>/1/`, ...): the five folds of `python train.py -m data.fold=0,1,2,3,4` in one argument.
Only paths are decided here; the files are read by `segkit.training.module.load_module`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from segkit.errors import MissingFile
from segkit.runs.checkpoints import CheckpointError
from segkit.runs.resume import LAST_CHECKPOINT, is_run

log = logging.getLogger(__name__)

BEST_CHECKPOINTS = "checkpoints/best-*.ckpt"  # conf/callbacks/default.yaml's model_checkpoint


def run_checkpoint(run: Path) -> Path | None:
    """The checkpoint a run is scored with: its best (the newest, should a resumed run have left two), else its
    last.ckpt; None when it has neither."""
    best = sorted(run.glob(BEST_CHECKPOINTS), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    last = run / LAST_CHECKPOINT
    return last if last.is_file() else None


def sweep_jobs(folder: Path) -> list[Path]:
    """The job directories of a multirun directory (`0/`, `1/`, ... that are runs), in job order."""
    jobs = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and is_run(p)]
    return sorted(jobs, key=lambda p: int(p.name))


def model_files(ckpt_path: str | Path | Sequence[str | Path]) -> list[Path]:
    """The checkpoint files `ckpt_path` names, in order: each entry a `.ckpt` file, a run directory (its best
    checkpoint, else last.ckpt) or a sweep directory (each job's). One file: a single model; more: an ensemble.

    Example:
        >>> from segkit.runs.model_files import model_files
        >>> model_files(["fold0/best.ckpt", "logs/train/multiruns/<stamp>"])  # doctest: +SKIP
        [PosixPath('fold0/best.ckpt'), PosixPath('logs/train/multiruns/<stamp>/0/checkpoints/best-...ckpt'), ...]
    """
    entries = [ckpt_path] if isinstance(ckpt_path, (str, Path)) else list(ckpt_path)
    if not entries:
        raise MissingFile("ckpt_path=[] names no checkpoint. Fix: ckpt_path=<file, run or sweep directory>.")
    files: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir() and is_run(path):
            files.append(_of_run(path, f"ckpt_path={entry}"))
        elif path.is_dir() and sweep_jobs(path):
            files += [_of_run(job, f"job {job.name} of the sweep {path}") for job in sweep_jobs(path)]
        elif path.is_dir():
            raise CheckpointError(
                f"ckpt_path={entry} is a folder but neither a run directory (with .hydra/overrides.yaml and "
                "checkpoints/) nor a sweep directory (job folders 0/, 1/, ...). Fix: pass a .ckpt file, a run "
                "directory or a multirun directory."
            )
        else:
            raise MissingFile(
                f'Checkpoint "{path}" does not exist. Fix: pass ckpt_path=<run dir>/checkpoints/last.ckpt (or a '
                "best-*.ckpt), a run directory or a sweep directory; several as ckpt_path=[a,b,c]."
            )
    return files


def _of_run(run: Path, what: str) -> Path:
    found = run_checkpoint(run)
    if found is None:
        raise CheckpointError(
            f"{what}: the run {run} has no checkpoint (neither {BEST_CHECKPOINTS} nor {LAST_CHECKPOINT}); it "
            "stopped before its first validation. Fix: resume it (python train.py ckpt_path=<that run>), or leave "
            "it out by listing the other checkpoints: ckpt_path=[a,b,...]."
        )
    if found.name == LAST_CHECKPOINT.name:
        log.info("%s: no best-*.ckpt, scoring its %s", what, LAST_CHECKPOINT)
    return found
