"""A frozen backbone (`backbone.freeze`), unfrozen after N epochs with its own rate and warm-up
(`backbone.unfreeze_at_epoch`, `backbone.unfreeze_warmup_steps`), and frozen batch-norm statistics
(`backbone.freeze_bn`): what trains, what the optimizer holds, the logged rates against their formula, exact resume
after unfreezing, and the start-up errors."""

import csv
import io
import signal

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from test_exact_resume import STEPS_PER_EPOCH, as_run, metrics_csv
from test_exact_resume import overrides as resume_overrides

from conftest import compose_config
from helpers import soak
from segkit.config.checks import ConfigError, validate
from segkit.models import Backbone
from segkit.tasks.train import train
from segkit.training.freezing import BackboneFreezing, FreezingError
from segkit.training.module import build_module
from segkit.training.schedules import poly


def encoder_params(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.net.backbone.encoder.named_parameters()}


def head_params(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.net.decoder.named_parameters()}


def bn_stats(modules) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{stat}": getattr(m, stat).clone()
        for name, m in modules.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        for stat in ("running_mean", "running_var")
    }


def fit(cfg, module, epochs: int = 1) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=instantiate(cfg.data))
    return trainer


# ------------------------------------------------------------------------------------------------------ fast checks


def test_the_schedule_holds_a_group_then_ramps_it_to_its_rate():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.5}], lr=1.0)
    schedule = poly(optimizer, total_steps=20, power=1.0)
    schedule.hold_groups([1], warmup_steps=4)
    rates = []
    for step in range(12):
        if step == 5:
            assert schedule.release_held_groups() == [1]
            assert schedule.release_held_groups() == []  # once
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    decay = [1 - k / 20 for k in range(12)]
    assert [r[0] for r in rates] == pytest.approx(decay)  # the other group: the plain schedule
    ramp = [0.0] * 5 + [0.25, 0.5, 0.75] + [1.0] * 4
    assert [r[1] for r in rates] == pytest.approx([0.5 * d * f for d, f in zip(decay, ramp)])
    state = schedule.state_dict()
    assert (state["group_start"], state["group_warmup_steps"]) == ([0, 5], [0, 4])  # plain data, resumed with it


def test_freeze_bn_keeps_the_backbones_batch_norms_in_eval_mode():
    backbone = Backbone("resnet18", freeze_bn=True).train()
    norms = [m for m in backbone.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert backbone.training and backbone.encoder.conv1.training
    assert all(m.training for m in Backbone("resnet18").train().encoder.modules())


def test_freezing_settings_are_popped_from_the_backbone_config():
    with pytest.raises(FreezingError, match="Fix: backbone.freeze=true"):
        BackboneFreezing(unfreeze_at_epoch=2)
    with pytest.raises(FreezingError, match="unfreeze_at_epoch=0"):
        BackboneFreezing(freeze=True, unfreeze_at_epoch=0)
    assert not BackboneFreezing(freeze=True).unfreezes and BackboneFreezing(True, 1).unfreezes


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["backbone.unfreeze_at_epoch=-1", "backbone.freeze=true"], "backbone.unfreeze_at_epoch=-1 is out of range"),
        (["backbone.unfreeze_at_epoch=0", "backbone.freeze=true"], "backbone.unfreeze_at_epoch=0 is out of range"),
        (["backbone.unfreeze_at_epoch=2"], "backbone.unfreeze_at_epoch=2 with backbone.freeze=false"),
        (["backbone.unfreeze_warmup_steps=-3"], "backbone.unfreeze_warmup_steps=-3 is out of range (below 0)"),
        (["backbone.unfreeze_warmup_steps=5", "backbone.freeze=true"], "without backbone.unfreeze_at_epoch"),
        (["backbone.freeze=maybe"], "backbone.freeze='maybe' (a string) is not true or false"),
        (["backbone.freeze_bn=2"], "backbone.freeze_bn=2 is not true or false"),
        (["backbone.unfreeze_at_epoch=1.5", "backbone.freeze=true"], "is not a whole number"),
    ],
)
def test_bad_freezing_values_fail_at_start_up(tiny_train_cfg, settings, message):
    with pytest.raises(ConfigError) as caught:
        validate(tiny_train_cfg(*settings), "train")
    assert message in str(caught.value) and "Fix: " in str(caught.value)


def test_an_unfreezing_backbone_gets_its_own_groups_without_param_groups(tiny_train_cfg):
    cfg = tiny_train_cfg("backbone.freeze=true", "backbone.unfreeze_at_epoch=1", "scheduler=none")
    module = build_module(cfg)
    assert not any(p.requires_grad for p in module.net.backbone.encoder.parameters())
    counts = module.parameter_counts()
    encoder = sum(p.numel() for p in module.net.backbone.encoder.parameters())
    assert counts["params/trainable"] == counts["params/total"] - encoder
    module.trainer = L.Trainer(accelerator="cpu", logger=False)
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert [g["name"] for g in optimizer.param_groups] == ["backbone", "head"]
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {
        id(p) for p in module.net.backbone.encoder.parameters()
    }
    assert [g["lr"] for g in optimizer.param_groups] == [0.0, cfg.optimizer.lr]  # held; scheduler=none: constant
    assert not any(p.requires_grad for p in module.net.backbone.encoder.parameters())  # still frozen
    schedule.release_held_groups()
    assert [g["lr"] for g in optimizer.param_groups] == [cfg.optimizer.lr] * 2


def test_an_unfreezing_epoch_the_run_never_reaches_is_a_warning(tiny_train_cfg, caplog):
    """Not an error: `debug=fast` (one epoch) runs an experiment that unfreezes later."""
    module = build_module(tiny_train_cfg("backbone.freeze=true", "backbone.unfreeze_at_epoch=1"))
    module.trainer = L.Trainer(accelerator="cpu", logger=False, max_epochs=1)
    module.on_fit_start()
    assert "the backbone stays frozen for the whole run" in caplog.text


# ---------------------------------------------------------------------------------------------------- training runs


@pytest.mark.slow
def test_a_frozen_backbone_does_not_train_and_has_no_optimizer_state(tiny_train_cfg):
    cfg = tiny_train_cfg("backbone.freeze=true")
    module = build_module(cfg)
    encoder = sum(p.numel() for p in module.net.backbone.encoder.parameters())
    counts = module.parameter_counts()
    assert counts["params/trainable"] == counts["params/total"] - encoder > 0
    before, head_before = encoder_params(module), head_params(module)
    trainer = fit(cfg, module)
    assert trainer.global_step == 2
    after, head_after = encoder_params(module), head_params(module)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not all(torch.equal(head_before[n], head_after[n]) for n in head_before)
    (optimizer,) = trainer.optimizers
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    frozen = {id(p) for p in module.net.backbone.encoder.parameters()}
    assert not in_optimizer & frozen and not {id(p) for p in optimizer.state} & frozen
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == counts["params/trainable"]


@pytest.mark.slow
def test_freeze_bn_keeps_the_backbones_statistics_while_its_weights_train(tiny_train_cfg):
    cfg = tiny_train_cfg("backbone.freeze_bn=true")
    module = build_module(cfg)
    encoder_stats, decoder_stats = bn_stats(module.net.backbone.encoder), bn_stats(module.net.decoder)
    before = encoder_params(module)
    fit(cfg, module)
    assert module.net.backbone.encoder.bn1.training is False and module.net.decoder.training
    assert all(torch.equal(v, bn_stats(module.net.backbone.encoder)[k]) for k, v in encoder_stats.items())
    assert not all(torch.equal(v, bn_stats(module.net.decoder)[k]) for k, v in decoder_stats.items())
    after = encoder_params(module)
    assert not torch.equal(before["bn1.weight"], after["bn1.weight"])  # the affine weights still train
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])


# Unfreezing with a warm-up, stopped mid-epoch right in the warm-up and resumed: on the exact-resume test's run.
WARMUP = 3
MULT = 0.1
UNFREEZE = [
    "backbone.freeze=true",
    "backbone.unfreeze_at_epoch=1",
    f"backbone.unfreeze_warmup_steps={WARMUP}",
    f"+optimizer.param_groups.backbone_lr_mult={MULT}",
    "callbacks.model_checkpoint.save_top_k=-1",  # the weights after each epoch
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return soak.write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def unfrozen_run(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("unfrozen")
    cfg = compose_config("train", resume_overrides(dataset) + UNFREEZE, run)
    train(cfg)
    return cfg, run


@pytest.mark.slow
def test_the_backbone_trains_from_its_epoch_at_its_own_ramped_rate(unfrozen_run):
    cfg, run = unfrozen_run
    rows = list(csv.DictReader(io.StringIO(metrics_csv(run))))
    backbone = {int(r["step"]): float(r["lr-AdamW/backbone"]) for r in rows if r.get("lr-AdamW/backbone")}
    head = {int(r["step"]): float(r["lr-AdamW/head"]) for r in rows if r.get("lr-AdamW/head")}
    steps = 2 * STEPS_PER_EPOCH
    assert sorted(backbone) == sorted(head) == list(range(steps))
    lr, sched = cfg.optimizer.lr, cfg.scheduler
    for k in range(steps):
        warm = sched.warmup_start + (1 - sched.warmup_start) * k / sched.warmup_steps if k < sched.warmup_steps else 1
        progress = min(1.0, max(0.0, (k - sched.warmup_steps) / max(1, steps - sched.warmup_steps)))
        schedule = lr * warm * (1 - progress) ** sched.power
        ramp = 0.0 if k < STEPS_PER_EPOCH else min(1.0, (k - STEPS_PER_EPOCH + 1) / WARMUP)
        assert head[k] == pytest.approx(schedule, rel=1e-6), k
        assert backbone[k] == pytest.approx(schedule * MULT * ramp, rel=1e-6, abs=0), k
    assert [backbone[k] for k in range(STEPS_PER_EPOCH)] == [0.0] * STEPS_PER_EPOCH

    # The backbone's weights as built (the run's seed), after epoch 0 (frozen) and after epoch 1 (training).
    L.seed_everything(cfg.seed, workers=True)
    instantiate(cfg.data)
    names = [f"net.backbone.encoder.{n}" for n in encoder_params(build_module(cfg))]
    L.seed_everything(cfg.seed, workers=True)
    instantiate(cfg.data)
    initial = build_module(cfg).state_dict()
    epoch0, epoch1 = (
        torch.load(path, weights_only=True)["state_dict"] for path in sorted((run / "checkpoints").glob("best-*"))
    )
    assert all(torch.equal(initial[n], epoch0[n]) for n in names)
    assert not all(torch.equal(epoch0[n], epoch1[n]) for n in names)
    head = [n for n in initial if n.startswith("net.decoder.") and initial[n].is_floating_point()]
    assert not all(torch.equal(initial[n], epoch0[n]) for n in head)


@pytest.mark.slow
@pytest.mark.parametrize(
    "stop_at",
    [STEPS_PER_EPOCH + 2, STEPS_PER_EPOCH],
    ids=["in-the-warm-up-after-unfreezing", "in-the-last-frozen-batch"],
)
def test_a_stop_resumes_the_unfreezing_exactly(dataset, unfrozen_run, tmp_path, stop_at):
    """SIGTERM in epoch 1's third step (the backbone released, its warm-up half done), or in epoch 0's last batch
    (the resumed run validates epoch 0, then unfreezes): the resumed run's history is the uninterrupted one's."""
    run_args = resume_overrides(dataset) + UNFREEZE
    run = as_run(tmp_path / "run", run_args)
    kill = [
        "+callbacks.interrupt._target_=helpers.interrupt.KillAtStep",
        f"+callbacks.interrupt.step={stop_at}",
        f"+callbacks.interrupt.signum={int(signal.SIGTERM)}",
    ]
    with pytest.raises(SystemExit):
        train(compose_config("train", run_args + kill, run))
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (stop_at // (STEPS_PER_EPOCH + 1), stop_at)
    (schedule,) = saved["lr_schedulers"]
    released = STEPS_PER_EPOCH if stop_at > STEPS_PER_EPOCH else None  # at epoch 1's first step
    assert schedule["group_start"] == [released, 0]
    train(compose_config("train", run_args + [f"ckpt_path={run}"], run))
    assert metrics_csv(run) == metrics_csv(unfrozen_run[1])
