"""A save that dies half-way leaves the previous checkpoint whole."""

import pytest
import torch

from segkit.runs.checkpoint_io import AtomicCheckpointIO


def test_an_interrupted_save_leaves_the_old_checkpoint_loadable(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)

    def dies_half_way(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # what a kill would cut short

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "weights": torch.zeros(3)}, path)
    monkeypatch.undo()
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["weights"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


@pytest.mark.slow
def test_training_saves_through_it(tiny_train_cfg):
    from segkit.tasks.common import build_trainer

    trainer = build_trainer(tiny_train_cfg())
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
