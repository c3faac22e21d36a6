"""Time budgets: with trainer.max_time the learning-rate schedule decays by the time used as well as by steps, and a
run stopped by its budget ends at the schedule's final rate (segkit.training.schedules, segkit.callbacks.TimeBudget)."""

import csv
import itertools

import pytest
import torch
from lightning.pytorch.callbacks import timer as timer_module

from conftest import TINY_BACKBONE
from segkit.tasks.train import train
from segkit.training.schedules import cosine, poly


def schedule(make, total_steps=100, **kwargs):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return optimizer, make(optimizer, total_steps=total_steps, **kwargs)


def test_the_schedule_follows_steps_or_time_whichever_is_further_along():
    optimizer, sched = schedule(poly, power=1.0)
    for _ in range(10):
        optimizer.step()
        sched.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.9)  # steps: 10 of 100
    sched.set_time_progress(0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5) == sched.get_last_lr()[0]
    sched.set_time_progress(0.05)  # behind the steps: the steps count
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.9)
    sched.set_time_progress(1.0)
    assert optimizer.param_groups[0]["lr"] == 0.0
    optimizer.step()
    sched.step()
    assert optimizer.param_groups[0]["lr"] == 0.0  # the time progress holds across steps


def test_time_progress_decays_cosine_to_min_lr_and_warmup_still_rises_by_steps():
    optimizer, sched = schedule(cosine, min_lr=0.1, warmup_steps=10, warmup_start=0.2)
    sched.set_time_progress(0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * (0.1 + 0.9 * 0.5))
    sched.set_time_progress(1.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * 0.1)
    for _ in range(10):
        optimizer.step()
        sched.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_a_run_without_a_step_bound_decays_by_time_only():
    optimizer, sched = schedule(poly, total_steps=float("inf"), power=1.0)
    for _ in range(5):
        optimizer.step()
        sched.step()
    assert optimizer.param_groups[0]["lr"] == 1.0
    sched.set_time_progress(0.25)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.75)


class FakeTime:
    """Lightning's Timer reads this clock: each reading is 50 ms after the last, so a run's course does not depend
    on the machine's speed or load."""

    def __init__(self) -> None:
        self.readings = itertools.count()

    def monotonic(self) -> float:
        return next(self.readings) * 0.05


def logged_rates(run_dir) -> list[tuple[int, float]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [(int(r["step"]), float(r["lr-AdamW"])) for r in csv.DictReader(f) if r.get("lr-AdamW")]


@pytest.mark.slow
def test_a_run_stopped_by_its_time_limit_ends_at_the_final_rate(tiny_train_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(timer_module, "time", FakeTime())
    # Checkpoints and validation are not what is tested, and took most of the time.
    no_checkpoints = [
        "callbacks.model_checkpoint=null",
        "callbacks.last_checkpoint=null",
        "callbacks.periodic_checkpoint=null",
        "+trainer.enable_checkpointing=false",
        "+trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
    ]
    train(
        tiny_train_cfg(
            "scheduler.warmup_steps=2",
            TINY_BACKBONE,
            "trainer.max_epochs=1000",
            "trainer.max_time={seconds:2}",
            "trainer.log_every_n_steps=1",
            *no_checkpoints,
            output_dir=tmp_path / "run",
        )
    )
    rates = logged_rates(tmp_path / "run")
    steps = [step for step, _ in rates]
    assert steps == list(range(len(steps))) and 6 <= len(steps) < 100  # stopped by the budget, not max_epochs
    peak = 0.003  # conf/optimizer/adamw.yaml
    assert 0.09 * peak < rates[0][1] <= 0.1 * peak  # the warm-up's start (by steps), times the decay's (by time)
    decay = [lr for _, lr in rates[2:]]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert decay[-1] == 0.0  # poly's final rate, on the last step
    # By steps alone (2000 steps for 1000 epochs) the rate would still be near its peak.
    assert decay[len(decay) // 2] < 0.75 * peak
