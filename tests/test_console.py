"""What a run says, as a user sees it with the output redirected (a log file, a cluster job): one line per epoch
in the console and in train.log, each Lightning line once, none of the known noise, and at the end where
everything went and what to run next."""

import re
from types import SimpleNamespace

import pytest

from conftest import ROOT, TINY_BACKBONE, TINY_DATA, run_script

NOISE = (
    "Tip:",  # Lightning's advertising
    "anonymous setting has no effect",  # W&B, about a setting Lightning always passes
    "`resume` will be ignored",  # W&B offline, likewise
    "LeafSpec",  # Lightning calling a torch API torch deprecates
    "does not have many workers",  # Lightning's advice on a worker count the config chose
)


@pytest.mark.slow
def test_a_redirected_default_run_tells_its_story_once(tmp_path):
    # The default run's loggers, callbacks and console; a tiny network (the story does not depend on it).
    proc = run_script(
        str(ROOT / "train.py"), *TINY_DATA, TINY_BACKBONE, "trainer.max_epochs=2", "test=false", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    log = (run / "train.log").read_text()

    for text in (console, log):
        epochs = re.findall(
            r"epoch (\d)/2  train loss [\d.]+  val loss [\d.]+  val mIoU [\d.]+  best [\d.]+  \d+ s", text
        )
        assert epochs == ["1", "2"], text[-3000:]
    assert re.search(r"epoch 1/2 .* ETA ", console)  # the time left, after the first epoch
    assert console.count("GPU available:") == 1 and console.count("Seed set to") == 1  # not once per handler
    assert [noise for noise in NOISE if noise in console] == []
    closing = console[console.index("Run directory:") :]
    assert f"Run directory:   {run}" in closing and "Best checkpoint: " in closing
    assert "Dashboard:       make dashboard" in closing and "W&B (offline):   wandb sync " in closing


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def fake_trainer(max_epochs: int, callbacks: list, processed: int = 2) -> SimpleNamespace:
    """What EpochLine reads of a Trainer, at epoch 0 with `processed` of its 4 training batches done."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=processed))
    return SimpleNamespace(
        current_epoch=0,
        max_epochs=max_epochs,
        is_global_zero=True,
        sanity_checking=False,
        should_stop=False,
        callback_metrics={},
        callbacks=callbacks,
        num_training_batches=4,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
    )


def test_an_epoch_resumed_mid_way_reports_the_time_spent_in_it(monkeypatch, caplog):
    """Stopped 30 s into an epoch, resumed an hour later, 30 s more: the epoch took 1 min, and the time left is
    estimated from what the resumed process trained (half an epoch in 30 s)."""
    from segkit.runs import console

    clock = FakeClock()
    monkeypatch.setattr(console, "time", clock)
    trainer = fake_trainer(max_epochs=3, callbacks=[])
    first = console.EpochLine()
    first.on_train_start(trainer, None)
    first.on_train_epoch_start(trainer, None)
    clock.now += 30
    saved = first.state_dict()  # a checkpoint half-way through the epoch
    clock.now += 3600  # killed, and resumed an hour later
    resumed = console.EpochLine()
    resumed.load_state_dict(saved)
    resumed.on_train_start(trainer, None)  # Lightning calls no on_train_epoch_start for the epoch it goes on with
    clock.now += 30
    with caplog.at_level("INFO", logger="segkit"):
        resumed.on_train_epoch_end(trainer, SimpleNamespace())
    assert "epoch 1/3  1 min 00 s  ETA 2 min 00 s" in caplog.text


def epoch_lines(line, trainer: SimpleNamespace, clock: FakeClock, seconds: list[float], caplog) -> list[str]:
    """The time-left part of each epoch's line, for epochs of `seconds` each; the last one stops the trainer."""
    found = []
    for number, took in enumerate(seconds):
        trainer.current_epoch = number
        line.on_train_epoch_start(trainer, None)
        clock.now += took
        trainer.should_stop = number == len(seconds) - 1 and trainer.max_epochs != len(seconds)
        caplog.clear()
        with caplog.at_level("INFO", logger="segkit"):
            line.on_train_epoch_end(trainer, SimpleNamespace())
        found.append(caplog.records[-1].getMessage().split(f" {int(took)} s", 1)[1].strip())
    return found


def test_under_a_time_limit_the_eta_is_the_sooner_end_and_the_last_line_names_the_limit(monkeypatch, caplog):
    """The issue's run, `trainer.max_time=00:00:00:45 trainer.max_epochs=200`, 10 s epochs: after the first, the
    epochs left would take 33 min (before: "ETA 33 min 10 s"), the limit leaves 35 s; the limit stops the fifth (the
    Timer's clock past 45 s) and its line says so (before: an ETA of 32 min). A run whose epochs end first keeps
    the epochs' ETA."""
    from lightning.pytorch.callbacks import Timer
    from lightning.pytorch.callbacks import timer as lightning_timer

    from segkit.runs import console

    clock = FakeClock()
    monkeypatch.setattr(console, "time", clock)
    monkeypatch.setattr(lightning_timer, "time", clock)
    timer = Timer(duration="00:00:00:45")
    trainer = fake_trainer(max_epochs=200, callbacks=[timer], processed=4)
    line = console.EpochLine()
    timer.on_train_start(trainer, None)
    line.on_train_start(trainer, None)
    assert epoch_lines(line, trainer, clock, [10, 10, 10, 10, 6], caplog) == [
        "ETA 35 s (trainer.max_time)",
        "ETA 25 s (trainer.max_time)",
        "ETA 15 s (trainer.max_time)",
        "ETA 5 s (trainer.max_time)",
        "stopped by the time limit (trainer.max_time, 45 s)",
    ]

    hour = Timer(duration="00:01:00:00")
    trainer = fake_trainer(max_epochs=3, callbacks=[hour], processed=4)
    line = console.EpochLine()
    hour.on_train_start(trainer, None)
    line.on_train_start(trainer, None)
    assert epoch_lines(line, trainer, clock, [10, 10, 10], caplog) == ["ETA 20 s", "ETA 10 s", ""]
