"""The LightningModule built from the configs: model x backbone pairs train a batch, overfitting, losses,
plain-data hyperparameters, weights-only checkpoints, speed switches. (Precision: test_precision_and_switches.py.)"""

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from conftest import TINY_BACKBONE
from segkit.training.module import SegmentationModule, build_module

CONF = Path(__file__).resolve().parents[1] / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
BACKBONES = sorted(p.stem for p in (CONF / "backbone").glob("*.yaml"))
LOSSES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))


def fit_one_batch(cfg, module=None, **trainer_kwargs) -> L.Trainer:
    """One training and one validation batch through the real Trainer."""
    trainer = L.Trainer(
        fast_dev_run=1, logger=False, enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs
    )
    trainer.fit(module or build_module(cfg), datamodule=instantiate(cfg.data))
    return trainer


# Every model config on the default backbone, every backbone config under the default model, FCN on the CNNs,
# and the transformer pairs the experiments name (all 28 pairs would add minutes to the suite).
PAIRS = sorted(
    {(m, "resnet18") for m in MODELS}
    | {("unet", b) for b in BACKBONES}
    | {("fcn", b) for b in ("resnet18", "resnet50", "efficientnet_b0", "convnext_tiny")}
    | {("upernet", "swin_tiny"), ("upernet", "vit_small"), ("segformer", "pvt_v2_b2")}
)


@pytest.mark.slow
@pytest.mark.parametrize("model,backbone", PAIRS)
def test_every_model_and_backbone_config_trains_a_batch(tiny_train_cfg, model, backbone):
    cfg = tiny_train_cfg(f"model={model}", f"backbone={backbone}")
    assert cfg.model.num_classes == cfg.data.num_classes  # interpolated, not repeated
    module = build_module(cfg)
    before = [p.detach().clone() for p in module.net.parameters()]
    trainer = fit_one_batch(cfg, module, accelerator="cpu")
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss_step"])
    assert any(not torch.equal(b, p) for b, p in zip(before, module.net.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("model,loss", [("unet", "ce"), ("fcn", "ce_dice")])
def test_overfits_one_batch(tiny_train_cfg, model, loss):
    cfg = tiny_train_cfg(f"model={model}", f"loss={loss}", "scheduler=none", "optimizer.lr=0.003")
    module = build_module(cfg)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    optimizer = module.configure_optimizers()
    module.train()
    losses = []
    for _ in range(30):
        loss_value = module.criterion(module(batch["image"]), batch["mask"])
        optimizer.zero_grad()
        loss_value.backward()
        optimizer.step()
        losses.append(loss_value.item())
    assert losses[-1] < 0.4 * losses[0], losses


TASK_DATA = {"multiclass": "data=synthetic", "multilabel": "data=synthetic_multilabel"}  # binary: test_task_kinds
SIGMOID_ONLY = {"bce", "bce_dice"}  # binary cross-entropy: refused for exclusive classes


@pytest.mark.parametrize("task", list(TASK_DATA))
@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_config_builds_for_every_task_and_is_finite(tiny_train_cfg, loss, task):
    cfg = tiny_train_cfg(f"loss={loss}", "model=fcn", TASK_DATA[task])
    if task == "multiclass" and loss in SIGMOID_ONLY:
        with pytest.raises(Exception, match="does not apply to data.task=multiclass"):
            build_module(cfg)
        return
    module = build_module(cfg)
    n = cfg.data.num_classes
    logits = torch.randn(2, module.net.num_classes, 8, 8)
    target = torch.randint(0, 2, (2, n, 8, 8)) if task == "multilabel" else torch.randint(0, n, (2, 8, 8))
    assert torch.isfinite(module.criterion(logits, target))


@pytest.mark.slow
def test_binary_task_trains(tiny_train_cfg):
    cfg = tiny_train_cfg("data.num_classes=2", "data.class_names=[bg,disc]", "data.palette=[[0,0,0],[255,0,0]]")
    trainer = fit_one_batch(cfg, accelerator="cpu")
    assert "val/IoU/disc" in trainer.callback_metrics


def test_hyperparameters_are_plain_data(tiny_train_cfg):
    module = build_module(tiny_train_cfg())

    def check(value):
        if isinstance(value, dict):
            for v in value.values():
                check(v)
        elif isinstance(value, list):
            for v in value:
                check(v)
        else:
            assert value is None or isinstance(value, (str, int, float, bool)), type(value)

    check(dict(module.hparams))
    assert module.hparams.data["class_names"] == ["background", "disc", "square", "triangle"]


@pytest.mark.slow
def test_checkpoint_loads_with_weights_only(tiny_train_cfg, tmp_path):
    module = build_module(tiny_train_cfg(TINY_BACKBONE))
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=instantiate(tiny_train_cfg().data))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    torch.load(path, weights_only=True)  # raises if anything but plain data and tensors is inside
    loaded = SegmentationModule.load_from_checkpoint(path, weights_only=True)
    x = torch.rand(1, 3, 40, 56)
    module.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.allclose(module(x), loaded(x))


class Compiled(torch.nn.Module):
    """What torch.compile returns, a module wrapping the network (`_orig_mod`), without importing the compiler."""

    def __init__(self, net):
        super().__init__()
        self._orig_mod = net

    def forward(self, *args):
        return self._orig_mod(*args)


def test_channels_last_and_compile_switches_keep_the_network_and_its_checkpoint_keys(tiny_train_cfg, monkeypatch):
    plain = build_module(tiny_train_cfg("model.channels_last=false"))
    fast = build_module(tiny_train_cfg("model.channels_last=true"))
    fast.load_state_dict(plain.state_dict())
    images = torch.rand(2, 3, 40, 56)
    plain.eval(), fast.eval()
    with torch.no_grad():
        assert torch.allclose(fast(images), plain(images), atol=1e-5)
    assert fast.net.backbone.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(torch, "compile", Compiled)  # the real one compiles lazily anyway: nothing to run here
    compiled = build_module(tiny_train_cfg("model.compile=true"))
    assert isinstance(compiled.compiled_net, Compiled) and compiled.compiled_net._orig_mod is compiled.net
    assert compiled.state_dict().keys() == plain.state_dict().keys()  # the wrapper is kept out of checkpoints
    with torch.no_grad():
        assert torch.equal(compiled.eval()(images), compiled.net(images))  # forward goes through the wrapper


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
def test_the_model_summary_counts_the_flops_of_one_training_crop(tiny_train_cfg, precision):
    """What `trainer.fit` prints before training: the network's FLOPs for one crop, in the precision's own input
    type (bf16-true feeds bf16), not Lightning's "Total FLOPs: 0"."""
    from lightning.pytorch.utilities.model_summary import ModelSummary
    from torch.utils.flop_counter import FlopCounterMode

    cfg = tiny_train_cfg()
    module = build_module(cfg)
    module.trainer = L.Trainer(precision=precision, logger=False, accelerator="cpu")
    module.trainer.precision_plugin.convert_module(module)
    module.setup("fit")
    module.trainer = None  # the summary then runs the example as given, without the fit's data hooks
    crop = tuple(cfg.data.crop_size)
    assert module.example_input_array.shape == (1, cfg.data.in_channels, *crop)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module.net.eval()(module.example_input_array)
    assert ModelSummary(module).total_flops == counter.get_total_flops() > 0
