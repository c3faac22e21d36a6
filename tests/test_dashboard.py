"""The dashboard without an account: the default run logs to TensorBoard beside W&B and CSV, and its event files
hold the scalars, the prediction panels and confusion matrices of each validation, and the hyperparameters with
the metric columns of the HParams view. Also: which validation images the panels show, and checkpoint sizes."""

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_config
from segkit.callbacks import PredictionSamples
from segkit.callbacks.dashboard import HPARAMS_COLUMNS, HPARAMS_METRICS, run_hparams
from segkit.callbacks.prediction_samples import spread_positions, validation_count
from segkit.tasks.train import train


def test_the_default_run_logs_to_wandb_tensorboard_and_csv(tmp_path):
    cfg = compose_config("train", [], tmp_path / "run")
    assert set(cfg.logger) == {"csv", "wandb", "tensorboard"}
    assert cfg.trainer.max_time is None  # settable without a `+`
    callbacks = list(cfg.callbacks)
    assert {"dashboard", "time_budget"} <= set(callbacks)
    assert callbacks.index("time_budget") < callbacks.index("learning_rate_monitor")  # it logs the rate used
    assert cfg.callbacks.model_checkpoint.save_weights_only is True
    assert cfg.callbacks.last_checkpoint.get("save_weights_only", False) is False  # what resuming needs
    ema = compose_config("train", ["callbacks=ema"], tmp_path / "ema")
    assert ema.callbacks.model_checkpoint.save_weights_only is False  # the averaged weights need a full save


def test_hparams_name_choices_values_and_what_the_command_line_set():
    config = {
        "optimizer": {"lr": 0.01, "weight_decay": 1e-4},
        "seed": 42,
        "trainer": {"max_time": None},
        "loss": {"weights": {"ce": 1.0, "dice": 0.5}},
        "data": {"image_size": [64, 64]},
    }
    choices = {"model": "fcn", "data": "synthetic", "experiment": None, "hydra/launcher": "basic"}
    overrides = ["model=fcn", "loss.weights.dice=0.5", "data.image_size=[64,64]", "logger=csv", "ckpt_path=last"]
    params = run_hparams(config, choices, overrides)
    assert params == {
        "data": "synthetic",
        "model": "fcn",
        "experiment": "none",
        "optimizer.lr": 0.01,
        "optimizer.weight_decay": 1e-4,
        "trainer.max_time": "null",
        "seed": 42,
        "loss.weights.dice": 0.5,
        "data.image_size": "[64, 64]",
        "overrides": "model=fcn loss.weights.dice=0.5 data.image_size=[64,64]",
    }


def fake_validation(callback: PredictionSamples, tmp_path: Path, batch_sizes: list[int], epoch: int = 0) -> list[int]:
    """Runs one validation epoch of 40 images through the callback; returns the positions it showed (each image's
    pixels hold its position in the validation set)."""
    data = {"palette": [[0, 0, 0], [255, 0, 0]], "ignore_index": 255, "class_names": ["a", "b"]}
    loader = SimpleNamespace(sampler=range(40), batch_size=batch_sizes[0])
    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        current_epoch=epoch,
        loggers=[],
        global_step=0,
        val_dataloaders=loader,
        num_val_batches=[len(batch_sizes)],
    )
    module = SimpleNamespace(hparams=SimpleNamespace(data=data))
    callback.on_validation_epoch_start(trainer, module)
    position = 0
    for index, size in enumerate(batch_sizes):
        images = torch.arange(position, position + size).float().view(-1, 1, 1, 1).expand(-1, 3, 4, 5) / 255
        masks = torch.zeros(size, 4, 5, dtype=torch.long)
        callback.on_validation_batch_end(trainer, module, {"preds": masks}, {"image": images, "mask": masks}, index)
        position += size
    assert position == 40
    callback.on_validation_epoch_end(trainer, module)
    assert (tmp_path / f"epoch_{epoch:03d}.png").is_file()
    grid = np.asarray(Image.open(tmp_path / f"epoch_{epoch:03d}.png"))
    shown = [int(grid[row * (4 + 4), 0, 0]) for row in range(len(callback.positions))]  # each panel's first pixel
    assert shown == callback.positions
    return shown


def test_validation_panels_are_spread_over_the_set_and_the_same_each_epoch(tmp_path):
    """Issue 13: the panel showed the first four images, near-identical frames in a video dataset."""
    callback = PredictionSamples(str(tmp_path), num_samples=4, seed=0)
    shown = fake_validation(callback, tmp_path, [4] * 10)
    assert [position // 10 for position in shown] == [0, 1, 2, 3]  # one in each quarter of the set
    assert fake_validation(callback, tmp_path, [4] * 10, epoch=1) == shown  # every epoch
    assert fake_validation(PredictionSamples(str(tmp_path), seed=0), tmp_path, [5] * 8) == shown  # any batching
    assert fake_validation(PredictionSamples(str(tmp_path), seed=1), tmp_path, [4] * 10) != shown
    assert spread_positions(3, 4, seed=0) == [0, 1, 2]
    limited = SimpleNamespace(val_dataloaders=[SimpleNamespace(sampler=range(40), batch_size=4)], num_val_batches=[2])
    assert validation_count(limited) == 8  # limit_val_batches=2


def events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.slow
def test_tensorboard_shows_scalars_panels_confusion_matrices_and_hparams(tiny_train_cfg, tmp_path):
    from tensorboard.plugins.hparams import metadata

    run = tmp_path / "run"
    train(
        tiny_train_cfg(
            "logger=tensorboard",
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=1",
            "test=true",
            "optimizer.lr=0.002",
            output_dir=run,
        )
    )
    accumulator = events(run / "tensorboard")  # the fit's and the test's event files together
    scalars = set(accumulator.Tags()["scalars"])
    assert {"train/loss_step", "train/loss_epoch", "val/loss", "val/mIoU", "val/mIoU_best", "lr-AdamW"} <= scalars
    assert {f"val/IoU/{name}" for name in ("background", "disc", "square", "triangle")} <= scalars
    assert {"test/mIoU", "test/IoU/triangle"} <= scalars
    images = accumulator.Tags()["images"]
    assert len(accumulator.Images("val/predictions")) == 2  # each validation
    assert len(accumulator.Images("val/confusion_matrix")) == 2
    assert len(accumulator.Images("test/confusion_matrix")) == 1 and len(images) == 3

    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAMS_METRICS)
    assert {m for m in HPARAMS_METRICS if not m.startswith("train/")} <= scalars | {"test/loss"}
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    hparams = {
        key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
        for key, value in start.hparams.items()
    }
    assert hparams["model"] == "unet" and hparams["backbone"] == "resnet18" and hparams["optimizer.lr"] == 0.002
    assert "optimizer.lr=0.002" in hparams["overrides"] and "logger=" not in hparams["overrides"]
    assert [h.name for h in experiment.hparam_infos] == list(HPARAMS_COLUMNS)  # the same for every run
    assert set(HPARAMS_COLUMNS) <= set(hparams) and hparams["trainer.log_every_n_steps"] == 1  # and what was set
    ticked = [h.name for h in experiment.hparam_infos if h.differs]  # TensorBoard ticks these first
    assert sorted(ticked) == ["backbone", "loss", "model", "optimizer.lr", "overrides"]

    # The first screen: scores, then losses, then the learning rate, each chart drawing a scalar the run logged.
    layout = custom_scalars_layout(accumulator)
    assert [category.title for category in layout.category] == ["Scores (validation)", "Losses", "Learning rate"]
    charts = [chart for category in layout.category for chart in category.chart]
    assert [chart.title for chart in charts[:2]] == ["val/mIoU", "val/mIoU_best"]
    for chart in charts:
        (pattern,) = chart.multiline.tag
        assert [tag for tag in scalars if re.search(pattern, tag)], (chart.title, pattern)


def custom_scalars_layout(accumulator):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    (event,) = accumulator.Tensors(metadata.CONFIG_SUMMARY_TAG)
    return layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])


def test_make_dashboard_opens_on_the_runs_scores_and_losses(tmp_path):
    """TensorBoard opens on the first tab with data in its plugin listing: served by `make dashboard`, that is the
    Custom Scalars tab, with the layout DashboardSummaries writes (before: Time Series, whose first cards were `epoch`
    and `lr-AdamW`). A real server on a free port, asked what TensorBoard's page asks."""
    import json
    import urllib.request

    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard import program

    from segkit.callbacks import DashboardSummaries
    from segkit.tasks.dashboard import plugins_scores_first, tensorboard_argv

    logger = TensorBoardLogger(str(tmp_path / "logs" / "run"), name="tensorboard", version="")
    trainer = SimpleNamespace(is_global_zero=True, loggers=[logger])
    DashboardSummaries().on_train_start(trainer, None)
    logger.log_metrics({"epoch": 0, "lr-AdamW": 0.001, "val/mIoU": 0.5}, step=1)
    logger.finalize("success")
    assert [c.title for c in custom_scalars_layout(events(Path(logger.log_dir))).category][0] == "Scores (validation)"

    argv = tensorboard_argv(["--logdir", str(tmp_path / "logs"), "--port", "0", "--load_fast", "false"])
    assert tensorboard_argv([])[1:] == ["--logdir", "logs", "--port", "6006"]
    board = program.TensorBoard(plugins=plugins_scores_first())
    board.configure(argv=[*argv, "--reload_interval", "0"])
    url = board.launch()  # a server thread of this process, gone with it
    listing = json.loads(urllib.request.urlopen(f"{url}data/plugins_listing", timeout=30).read())
    tabs = [name for name, plugin in listing.items() if plugin["enabled"]]
    assert tabs[0] == "custom_scalars" and {"timeseries", "scalars"} <= set(tabs), tabs


@pytest.mark.slow
def test_the_best_checkpoint_holds_the_weights_and_the_last_the_training_state(trained_run):
    """Issue 13: the best checkpoint kept the optimizer state too (a UNet's 172 MB each, 344 MB a run)."""
    _, run_dir, _ = trained_run
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    last = run_dir / "checkpoints" / "last.ckpt"
    best_state = torch.load(best, map_location="cpu", weights_only=True)
    last_state = torch.load(last, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in best_state and "lr_schedulers" not in best_state
    assert {"optimizer_states", "lr_schedulers", "callbacks"} <= set(last_state)
    assert set(best_state["state_dict"]) == set(last_state["state_dict"])
    assert best_state["hyper_parameters"]["model"] == last_state["hyper_parameters"]["model"]
    assert best.stat().st_size < 0.45 * last.stat().st_size  # AdamW keeps two tensors a weight
    assert OmegaConf.create(best_state["hyper_parameters"]["data"]).num_classes == 4
