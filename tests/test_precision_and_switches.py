"""Precision and speed switches, each a config option: bf16/16-mixed precision, gradient accumulation, gradient
clipping and an EMA of the weights (`callbacks=ema`). Tiny real trainings on CPU (16-mixed needs CUDA)."""

import math
import warnings

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging

from conftest import TINY_BACKBONE, tiny_train_config
from segkit.tasks.common import build_trainer
from segkit.training.metrics import scores_from_confusion
from segkit.training.module import build_module, load_module

# Shorter runs: no sanity validation, no model summary, every step logged.
FAST = ["trainer.num_sanity_val_steps=0", "++trainer.enable_model_summary=false", "trainer.log_every_n_steps=1"]
# Training only (no validation, no checkpoints, no callbacks), 4 batches of 2 images per epoch, on the tiny backbone.
TRAIN_ONLY = FAST + [
    TINY_BACKBONE,
    "~callbacks",
    "++trainer.enable_checkpointing=false",
    "++trainer.limit_val_batches=0",
    "data.batch_size=2",
]


def fit(cfg, *callbacks, ckpt_path=None):
    """The train task's own module and trainer (config callbacks plus `callbacks`), fitted."""
    module = build_module(cfg)
    trainer = build_trainer(cfg, list(callbacks))
    trainer.fit(module, datamodule=instantiate(cfg.data), ckpt_path=ckpt_path, weights_only=True)
    return trainer, module


def net_state(state: dict) -> dict[str, torch.Tensor]:
    """The network's weights and buffers of a module state_dict (no metric states)."""
    return {k: v for k, v in state.items() if k.startswith("net.")}


def float_params(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in net_state(state).items() if v.is_floating_point()}


def grad_stats(module) -> tuple[float, float]:
    """(total L2 norm, largest absolute value) of the gradients."""
    grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
    return total, max(g.abs().max().item() for g in grads)


class DtypeProbe(Callback):
    """Records the network's output dtype (is autocast on?) and the training loss of every step."""

    def __init__(self):
        self.logit_dtypes, self.losses = set(), []

    def on_train_start(self, trainer, pl_module):
        self.handle = pl_module.net.register_forward_hook(lambda m, i, out: self.logit_dtypes.add(out.dtype))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach())

    def on_train_end(self, trainer, pl_module):
        self.handle.remove()


# ---------------------------------------------------------------------------------------------- precision


# (The losses alone under bf16 autocast: tests/test_losses.py.)


def test_training_step_under_bf16_autocast_gives_a_float32_loss_and_exact_metrics(tmp_path):
    module = build_module(tiny_train_config(tmp_path))
    images = torch.rand(2, 3, 40, 56)
    masks = torch.randint(0, module.num_classes, (2, 40, 56))
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() without a Trainer
        assert module(images).dtype == torch.bfloat16
        loss = module.training_step({"image": images, "mask": masks}, 0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    confusion = module.train_confusion.compute()
    assert confusion.dtype == torch.long and confusion.sum().item() == masks.numel()  # counts, every pixel once
    assert scores_from_confusion(confusion)["mIoU"].dtype == torch.float64


def fixed_batch_loss(module, batch) -> float:
    """The training loss of one batch under bf16 autocast (batch statistics in BatchNorm), without a step."""
    module.train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return module.criterion(module(batch["image"]), batch["mask"]).item()


@pytest.mark.slow
def test_bf16_mixed_training_on_cpu_computes_its_loss_in_float32_and_learns(tmp_path):
    probe = DtypeProbe()
    cfg = tiny_train_config(
        tmp_path / "run",
        "trainer.precision=bf16-mixed",
        "trainer.max_epochs=3",
        "scheduler=none",
        "optimizer.lr=0.003",
        *FAST,
    )
    module = build_module(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    before = fixed_batch_loss(module, batch)
    trainer = build_trainer(cfg, [probe])
    trainer.fit(module, datamodule=instantiate(cfg.data), weights_only=True)
    assert trainer.precision == "bf16-mixed"
    assert probe.logit_dtypes == {torch.bfloat16}  # the network ran in bf16 (training and validation) ...
    assert len(probe.losses) == 6 and all(loss.dtype == torch.float32 for loss in probe.losses)  # ... the loss not
    after = fixed_batch_loss(module, batch)
    assert after < 0.9 * before, (before, after)  # six bf16 steps moved the loss of a batch it trained on
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for name in ("train/loss_epoch", "val/loss", "val/mIoU", "val/mDice", "train/mIoU"):
        assert math.isfinite(metrics[name]), name
    assert 0.0 <= metrics["val/mIoU"] <= 1.0
    header = open(trainer.logger.experiment.metrics_file_path).readline().split(",")
    assert {"train/loss_step", "val/loss", "val/mIoU", "val/mIoU_best"} <= set(h.strip() for h in header)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision,dtype", [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)])
def test_mixed_precision_training_on_gpu(tmp_path, precision, dtype):
    probe = DtypeProbe()
    cfg = tiny_train_config(tmp_path / "run", "trainer.accelerator=gpu", f"trainer.precision={precision}", *FAST)
    trainer, _ = fit(cfg, probe)
    assert (trainer.precision_plugin.scaler is not None) == (precision == "16-mixed")  # loss scaling for fp16
    assert probe.logit_dtypes == {dtype}
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in probe.losses)
    assert math.isfinite(float(trainer.callback_metrics["val/loss"]))


# ----------------------------------------------------------------------------------- gradient accumulation


class StepProbe(Callback):
    def __init__(self):
        self.global_steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.global_steps.append(trainer.global_step)


@pytest.mark.slow
@pytest.mark.parametrize("accumulate, steps_after_each_batch", [(1, [1, 2, 3, 4]), (2, [0, 1, 1, 2])])
def test_gradient_accumulation_steps_the_optimizer_every_n_batches(tmp_path, accumulate, steps_after_each_batch):
    probe = StepProbe()
    cfg = tiny_train_config(tmp_path, f"trainer.accumulate_grad_batches={accumulate}", *TRAIN_ONLY)
    module = build_module(cfg)
    before = {k: v.clone() for k, v in float_params(module.state_dict()).items()}
    trainer = build_trainer(cfg, [probe])
    trainer.fit(module, datamodule=instantiate(cfg.data))
    # Same 4 batches: 4 optimizer steps, or 2 with accumulation over 2; the schedule's length follows.
    assert probe.global_steps == steps_after_each_batch
    assert trainer.global_step == 4 // accumulate == trainer.estimated_stepping_batches
    assert math.isfinite(float(trainer.callback_metrics["train/loss_epoch"]))
    after = float_params(module.state_dict())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained


# ------------------------------------------------------------------------------------------ gradient clipping


class ClipProbe(Callback):
    """Gradient statistics before clipping (`on_before_optimizer_step` runs before Lightning clips: see
    Precision._after_closure) and as the optimizer step saw them (a step post-hook: the closure, clipping
    included, runs inside `optimizer.step`)."""

    def __init__(self):
        self.before, self.seen = [], []

    def on_train_start(self, trainer, pl_module):
        self.handle = trainer.optimizers[0].register_step_post_hook(
            lambda optimizer, args, kwargs: self.seen.append(grad_stats(pl_module))
        )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before.append(grad_stats(pl_module))

    def on_train_end(self, trainer, pl_module):
        self.handle.remove()


CLIP = 1e-3


@pytest.mark.slow
def test_gradient_clipping_by_norm_is_what_the_optimizer_sees(tmp_path):
    probe = ClipProbe()
    fit(
        tiny_train_config(
            tmp_path,
            f"trainer.gradient_clip_val={CLIP}",
            "trainer.gradient_clip_algorithm=norm",
            "++trainer.limit_train_batches=2",
            *TRAIN_ONLY,
        ),
        probe,
    )
    assert len(probe.before) == len(probe.seen) == 2
    for (norm_before, _), (norm_seen, _) in zip(probe.before, probe.seen):
        assert norm_before > 100 * CLIP  # the raw gradient is far larger ...
        assert norm_seen == pytest.approx(CLIP, rel=1e-3)  # ... the step saw it scaled to the clip norm


@pytest.mark.slow
def test_gradient_clipping_by_value_bounds_every_gradient(tmp_path):
    probe = ClipProbe()
    fit(
        tiny_train_config(
            tmp_path,
            f"trainer.gradient_clip_val={CLIP}",
            "trainer.gradient_clip_algorithm=value",
            "++trainer.limit_train_batches=2",
            *TRAIN_ONLY,
        ),
        probe,
    )
    assert len(probe.seen) == 2
    for (_, max_before), (_, max_seen) in zip(probe.before, probe.seen):
        assert max_before > 10 * CLIP
        assert max_seen == pytest.approx(CLIP)  # clamped to +-CLIP


def test_no_clipping_by_default(tmp_path):
    cfg = tiny_train_config(tmp_path)
    assert cfg.trainer.gradient_clip_val is None and cfg.trainer.accumulate_grad_batches == 1
    trainer = build_trainer(cfg)
    assert trainer.gradient_clip_val is None and trainer.gradient_clip_algorithm == "norm"


# ------------------------------------------------------------------------------------------------- EMA


class WeightsProbe(Callback):
    """The trained weights after every optimizer step, and the module's weights when training starts."""

    def __init__(self):
        self.steps, self.at_start = [], None

    def on_train_start(self, trainer, pl_module):
        self.at_start = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append({k: v.clone() for k, v in float_params(pl_module.state_dict()).items()})


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """Two epochs (4 optimizer steps) with `callbacks=ema` as configured."""
    run_dir = tmp_path_factory.mktemp("ema") / "run"
    cfg = tiny_train_config(run_dir, "callbacks=ema", "trainer.max_epochs=2", TINY_BACKBONE, *FAST)
    probe = WeightsProbe()
    trainer, module = fit(cfg, probe)
    (ema,) = [cb for cb in trainer.callbacks if isinstance(cb, EMAWeightAveraging)]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return cfg, run_dir, trainer, module, ema, probe, checkpoint


@pytest.mark.slow
def test_ema_checkpoint_holds_the_averaged_weights(ema_run):
    cfg, run_dir, trainer, module, ema, probe, checkpoint = ema_run
    decay = cfg.callbacks.ema.decay
    averaged, trained = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert checkpoint["global_step"] == 4 and checkpoint["averaging_state"]["n_averaged"].item() == 4
    assert set(averaged) == set(trained)
    # state_dict: the callback's averaged copy; current_model_state: the trained weights after the last step.
    copy = ema._average_model.module.state_dict()
    for key, value in net_state(averaged).items():
        assert torch.equal(value, copy[key]), key
    for key, value in float_params(trained).items():
        assert torch.equal(value, probe.steps[-1][key]), key
    # The EMA as documented: a copy at the first step, then ema = decay * ema + (1 - decay) * weights.
    expected = dict(probe.steps[0])
    for weights in probe.steps[1:]:
        expected = {k: decay * v + (1 - decay) * weights[k] for k, v in expected.items()}
    for key, value in float_params(averaged).items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6)
    changed = [k for k in float_params(averaged) if not torch.equal(averaged[k], trained[k])]
    assert len(changed) > 0.9 * len(float_params(averaged))
    # The run's best score, not the averaged copy's stale tracker (SegmentationModule.on_save_checkpoint).
    best = trained["val_miou_best.max_value"]
    assert torch.equal(averaged["val_miou_best.max_value"], best)
    assert best.item() == pytest.approx(float(trainer.callback_metrics["val/mIoU_best"]))
    # At the end of fit the module holds the averaged weights.
    for key, value in net_state(module.state_dict()).items():
        assert torch.equal(value, averaged[key]), key


@pytest.mark.slow
def test_ema_checkpoint_loads_for_evaluation_and_scores_what_validation_scored(ema_run, tmp_path):
    cfg, run_dir, trainer, module, ema, probe, checkpoint = ema_run
    loaded = load_module(run_dir / "checkpoints" / "last.ckpt")  # evaluate.py's path, weights_only=True
    for key, value in net_state(loaded.state_dict()).items():
        assert torch.equal(value, checkpoint["state_dict"][key]), key
    # Validation during training ran on the averaged weights: scoring them again gives the same mIoU.
    scorer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    (scores,) = scorer.validate(loaded, datamodule=instantiate(cfg.data), verbose=False)
    assert scores["val/mIoU"] == pytest.approx(float(trainer.callback_metrics["val/mIoU"]), abs=1e-6)


@pytest.mark.slow
def test_testing_a_checkpoint_after_an_ema_fit_scores_the_averaged_weights(ema_run):
    """train.py tests the best checkpoint with the fit's own Trainer, where the EMA callback still holds its
    averaged model; without SegmentationModule.on_load_checkpoint the callback would load the trained weights."""
    cfg, run_dir, trainer, module, ema, probe, checkpoint = ema_run
    trainer.test(
        module,
        datamodule=instantiate(cfg.data),
        ckpt_path=str(run_dir / "checkpoints" / "last.ckpt"),
        weights_only=True,
        verbose=False,
    )
    for key, value in net_state(module.state_dict()).items():
        assert torch.equal(value, checkpoint["state_dict"][key]), key


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # resumed into a new run directory
def test_resuming_an_ema_run_restores_trained_and_averaged_weights(ema_run, tmp_path):
    cfg, run_dir, trainer, module, ema, probe, checkpoint = ema_run
    resumed_cfg = tiny_train_config(tmp_path / "resumed", "callbacks=ema", "trainer.max_epochs=3", TINY_BACKBONE, *FAST)
    resumed_probe = WeightsProbe()
    resumed, _ = fit(resumed_cfg, resumed_probe, ckpt_path=run_dir / "checkpoints" / "last.ckpt")
    (resumed_ema,) = [cb for cb in resumed.callbacks if isinstance(cb, EMAWeightAveraging)]
    # Training goes on from the trained weights (and the run's best score), not from the averaged ones ...
    for key, value in float_params(checkpoint["current_model_state"]).items():
        assert torch.equal(resumed_probe.at_start[key], value), key
    assert torch.equal(
        resumed_probe.at_start["val_miou_best.max_value"], checkpoint["current_model_state"]["val_miou_best.max_value"]
    )
    # ... and the average goes on from the checkpoint's: 4 + 2 updates, with the EMA recurrence.
    assert resumed.global_step == 6
    assert resumed_ema._latest_update_step == 6
    assert resumed_ema._average_model.n_averaged.item() == 6
    decay = resumed_cfg.callbacks.ema.decay
    expected = float_params(checkpoint["state_dict"])
    for weights in resumed_probe.steps:
        expected = {k: decay * v + (1 - decay) * weights[k] for k, v in expected.items()}
    new = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in float_params(new["state_dict"]).items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6)
    assert resumed.current_epoch == 3
    best_before = checkpoint["state_dict"]["val_miou_best.max_value"].item()
    assert float(resumed.callback_metrics["val/mIoU_best"]) >= best_before
