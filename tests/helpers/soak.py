"""Soak test of exact resume: kill a small training run N times at random moments, resume it each time, and compare
its whole metrics history with an uninterrupted run's.

    python tests/helpers/soak.py [--kills 10] [--seed 0] [--workdir DIR] [--epochs 20] [--every-n-steps 3] [OVERRIDE]

Each attempt starts `train.py` (the first one afresh, later ones with `ckpt_path=last`) and sends SIGKILL,
SIGTERM or SIGINT (Ctrl-C) at a random moment: during start-up (one attempt in six), while a checkpoint is being
written (a temporary checkpoint file exists; one in three), or a random number of logged rows (steps,
validations) later plus a random fraction of a second (mid-step, validation or a save).
After N kills the run is resumed until it finishes. The data: 20 PNG pairs written to the work folder; the model:
FCN (dropout) on augmented crops read by two workers, so that every source of randomness is exercised. Besides
the checkpoint after every validation, `last.ckpt` is written every `--every-n-steps` steps (0: never), so that
saves land mid-epoch and in an epoch's last batch (4 steps an epoch). Extra overrides apply to both runs.
Prints one row per attempt and the verdict; exits 1 when the histories differ.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, run as a script too
from helpers.fake_data import THREE_CLASSES, blocks, image_for, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def write_dataset(root: Path) -> Path:
    """20 image/mask pairs on disk: augmentation and two workers, where a resume has the most to get wrong."""
    rng = np.random.default_rng(0)
    for i in range(20):
        mask = blocks(rng, size=(40, 52))
        save(root / "images" / f"{i}.png", image_for(mask, rng))
        save(root / "masks" / f"{i}.png", mask)
    return root


def overrides(data: Path, epochs: int, every_n_steps: int = 0) -> list[str]:
    """FCN (its dropout draws from the random state) on augmented crops read by two workers; a periodic
    `last.ckpt` every `every_n_steps` steps."""
    periodic = [f"callbacks.periodic_checkpoint.every_n_train_steps={every_n_steps}"] if every_n_steps else []
    return [
        *periodic,
        "data=folder",
        f"data.root={data}",
        *THREE_CLASSES,
        "data.splits={train:0.8,val:0.2}",
        "data.crop_size=32",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        "data.num_workers=2",
        "model=fcn",
        "logger=csv",
        f"trainer.max_epochs={epochs}",
        "trainer.log_every_n_steps=1",
        "test=false",
        "trainer.accelerator=cpu",
    ]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def runs(workdir: Path) -> list[Path]:
    folder = workdir / "logs" / "train" / "runs"
    return sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []


def saved_step(run: Path | None) -> str:
    last = run / "checkpoints" / "last.ckpt" if run else None
    if last is None or not last.is_file():
        return "-"
    import torch

    state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    return f"{state['epoch']}/{state['global_step']}"


def wait_for_save(proc: subprocess.Popen, workdir: Path, timeout: float) -> bool:
    """Until a temporary checkpoint file exists (a save under way) or the process ends."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        for run in runs(workdir):
            if any((run / "checkpoints").glob(".*.tmp-*")):
                return True
        time.sleep(0.002)
    return False


def logged_rows(workdir: Path) -> int:
    """Rows in the newest run's metrics.csv: it grows with every logged step and validation."""
    found = runs(workdir)
    path = found[-1] / "csv" / "metrics.csv" if found else None
    return path.read_text().count("\n") if path is not None and path.is_file() else 0


def wait_for_rows(proc: subprocess.Popen, workdir: Path, target: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None and logged_rows(workdir) < target:
        time.sleep(0.01)


def _wait(proc: subprocess.Popen, seconds: float) -> None:
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass


def metrics(run: Path) -> str:
    return (run / "csv" / "metrics.csv").read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--every-n-steps", type=int, default=3, help="periodic last.ckpt every N steps (0: none)")
    parser.add_argument("override", nargs="*", help="more overrides of train.py, for both runs")
    args = parser.parse_args()
    # Started in the background by a script, this process (and so each run it starts) would ignore SIGINT, as
    # shells make background jobs do: the runs get the default Ctrl-C a user's terminal gives.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(args.seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="segkit-soak-"))
    shutil.rmtree(workdir / "victim", ignore_errors=True)
    shutil.rmtree(workdir / "reference", ignore_errors=True)
    (workdir / "victim").mkdir(parents=True)
    (workdir / "reference").mkdir()
    data = write_dataset(workdir / "data")
    base = [*overrides(data, args.epochs, args.every_n_steps), *args.override]

    began = time.monotonic()
    reference = start(base, workdir / "reference")
    if reference.wait() != 0:
        print(reference.stderr.read()[-3000:])
        return 1
    duration = time.monotonic() - began
    print(f"Uninterrupted run: {duration:.1f} s. Killing a resumed copy {args.kills} times (seed {args.seed}).\n")

    victim = workdir / "victim"
    rows, attempt, killed = [], 0, 0
    while True:
        attempt += 1
        resumable = saved_step(runs(victim)[-1] if runs(victim) else None) != "-"
        proc = start(["ckpt_path=last"] if resumable else base, victim)
        if killed < args.kills:
            signum = rng.choice([signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
            draw = rng.random()
            if draw < 1 / 6:  # before training starts: imports, data checks, restoring
                delay = rng.uniform(0.5, 6.0)
                moment = f"start-up, {delay:.1f} s"
                _wait(proc, delay)
            elif draw < 1 / 2:
                moment = "during a save" if wait_for_save(proc, victim, timeout=duration) else "at the end"
            else:  # a few steps on, then a fraction of a second more: mid-step, validation or a save
                target = logged_rows(victim) + rng.randint(1, 12)
                wait_for_rows(proc, victim, target, timeout=duration)
                extra = rng.uniform(0.0, 1.0)
                _wait(proc, extra)
                moment = f"row {target} + {extra:.2f} s"
            if proc.poll() is None:
                proc.send_signal(signum)
                killed += 1
            else:
                signum, moment = None, "finished first"
        else:
            signum, moment = None, "left to finish"
        code = proc.wait()
        run = runs(victim)[-1] if runs(victim) else None
        rows.append((attempt, signal.Signals(signum).name if signum else "-", moment, code, saved_step(run)))
        if code not in (0, -signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT):
            print(proc.stderr.read()[-3000:])
        if code == 0 and run is not None and (run / "metrics.json").is_file():
            break
        if attempt > 4 * args.kills + 10:
            print("The run never finished.")
            break

    print(f"{'attempt':>7}  {'signal':<7}  {'moment':<16}  {'exit':>5}  {'last.ckpt epoch/step':>20}")
    for number, name, moment, code, step in rows:
        print(f"{number:>7}  {name:<7}  {moment:<16}  {code:>5}  {step:>20}")
    (ref_run,) = runs(workdir / "reference")
    victim_runs = runs(victim)
    same = bool(victim_runs) and metrics(victim_runs[-1]) == metrics(ref_run)
    lines = len(metrics(ref_run).splitlines()) - 1
    print(
        f"\n{killed} kills, {len(victim_runs)} run director{'y' if len(victim_runs) == 1 else 'ies'} "
        f"(a kill before the first checkpoint leaves one that cannot be resumed; a fresh start follows)."
    )
    print(f"Metrics history ({lines} rows) {'IDENTICAL to' if same else 'DIFFERS from'} the uninterrupted run's.")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
