"""The default run writes `last.ckpt` mid-epoch every 30 minutes of training, so that a SIGKILL loses at most that
much however long an epoch is (segkit.callbacks.PeriodicCheckpoint); checked on a simulated clock."""

from datetime import timedelta

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint, model_checkpoint

from conftest import TINY_BACKBONE, compose_config
from segkit.callbacks.periodic_checkpoint import PeriodicCheckpoint, as_timedelta
from segkit.tasks import common
from segkit.tasks.train import train


def test_intervals_read_as_trainer_max_time_does_and_a_wrong_one_names_the_fix():
    assert as_timedelta("00:00:30:00") == timedelta(minutes=30)
    assert as_timedelta("01:02:03:04") == timedelta(days=1, hours=2, minutes=3, seconds=4)
    assert as_timedelta(90) == timedelta(minutes=90) and as_timedelta(None) is None
    with pytest.raises(ValueError, match="train_time_interval='30min'.*DD:HH:MM:SS"):
        as_timedelta("30min")


def test_the_default_config_saves_every_30_minutes_and_null_turns_it_off(tmp_path):
    cfg = compose_config("train", [], tmp_path)
    assert cfg.callbacks.periodic_checkpoint.train_time_interval == "00:00:30:00"
    off = PeriodicCheckpoint(tmp_path, train_time_interval=None)
    assert off._train_time_interval is None and off._every_n_train_steps == 0 and off._every_n_epochs == 0


class Clock:
    """The checkpoint callback's clock: 16 simulated minutes pass in every training batch."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class SixteenMinuteBatches(Callback):
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_batch_end(self, *args) -> None:  # before the checkpoint callbacks, which Lightning runs last
        self.clock.now += 16 * 60


@pytest.mark.slow
@pytest.mark.parametrize(
    ("validate_every", "saves"),
    [
        # 32 minutes after the start at step 2 (the first epoch's last batch), then 32 minutes later at 4 and 6.
        (1, [(0, 2), (1, 4), (2, 6)]),
        # A save due in the last batch of an epoch without validation comes one batch on (resumed from there,
        # Lightning would skip the epoch's end); at step 6, the run's end, the epoch's own checkpoint does.
        (2, [(1, 3), (1, 4)]),
    ],
)
def test_a_default_run_saves_last_ckpt_each_time_30_minutes_have_passed(
    tiny_train_cfg, monkeypatch, validate_every, saves
):
    clock = Clock()
    monkeypatch.setattr(model_checkpoint, "time", clock)
    made = []
    real_save = ModelCheckpoint._save_checkpoint

    def recording_save(self, trainer, filepath):
        if isinstance(self, PeriodicCheckpoint):
            made.append((trainer.current_epoch, trainer.global_step, filepath))
        real_save(self, trainer, filepath)

    monkeypatch.setattr(ModelCheckpoint, "_save_checkpoint", recording_save)
    build = common.build_trainer
    with_clock = lambda cfg, callbacks: build(cfg, [*callbacks, SixteenMinuteBatches(clock)])  # noqa: E731
    monkeypatch.setattr("segkit.tasks.train.build_trainer", with_clock)
    cfg = tiny_train_cfg(  # 2 steps an epoch
        "trainer.max_epochs=3",
        f"trainer.check_val_every_n_epoch={validate_every}",
        "callbacks.model_checkpoint=null",
        TINY_BACKBONE,
    )
    train(cfg)
    assert [(epoch, step) for epoch, step, _ in made] == saves
    assert {path for _, _, path in made} == {str(cfg.paths.output_dir) + "/checkpoints/last.ckpt"}
    assert torch.load(made[0][2], weights_only=True)["global_step"] == made[-1][1]  # one file, the newest
