"""The LightningModule: training step, dataset-level metrics and optimisation, built from plain configs.

Only plain data goes into the hyperparameters (config dicts with `_target_` strings), so a
checkpoint loads with `weights_only=True` and carries everything needed to rebuild the model.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MaxMetric, MeanMetric

from segkit.config.trust import check_targets, safe_instantiate
from segkit.moved import with_moved_targets
from segkit.runs.checkpoints import load_state, read_checkpoint, stored_hparams, without_weight_sources
from segkit.task_kind import TaskKind
from segkit.training.freezing import BackboneFreezing, all_trainable, backbone_group_indices
from segkit.training.inference import Inference
from segkit.training.metrics import confusion_metric, named_scores, scores_from_confusion
from segkit.training.param_groups import KEY as PARAM_GROUPS_KEY
from segkit.training.param_groups import build_optimizer
from segkit.training.schedules import WarmupDecayLR

log = logging.getLogger(__name__)

HPARAMS_SOURCE = "the SegmentationModule hyperparameters"


# Metrics whose state is the training epoch's running sums: kept in checkpoints for a mid-epoch resume.
EPOCH_SUMS = ("train_confusion", "train_loss_mean")
EPOCH_SUMS_KEY = "segkit_epoch_sums_per_process"


class SegmentationModule(L.LightningModule):
    """The LightningModule: the network, the loss, the epoch's confusion-matrix metrics, the optimizer (with its
    parameter groups) and the per-step schedule, all built from plain configs, so that its hyperparameters, and so
    a checkpoint, are data. `build_module(cfg)` makes one from a composed train config, `load_module(path)` from a
    checkpoint.

    Args:
        model: the model config (`_target_` a segkit.models class, `channels_last` and `compile` switches).
        loss: the loss config.
        optimizer: a partial of a torch.optim class, with optional `param_groups` (segkit.training.param_groups).
        data: the data config: the class facts (num_classes, class_names, palette, ignore_index) and what rebuilds
            the datamodule from a checkpoint alone.
        scheduler: a partial of a segkit.training.schedules function, or None.
        trusted_modules: the command's packages besides segkit's whose classes the configs may name; never a
            hyperparameter (segkit.config.trust).

    Example:
        >>> from segkit.training.module import SegmentationModule
        >>> module = SegmentationModule(
        ...     model={"_target_": "segkit.models.UNet", "backbone": {"name": "resnet18"}, "num_classes": 2},
        ...     loss={"_target_": "segkit.training.losses.DiceLoss"},
        ...     optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3},
        ...     data={"num_classes": 2, "class_names": ["bg", "fg"], "palette": [[0, 0, 0], [255, 255, 255]]},
        ... )
        >>> module.hparams.loss
        {'_target_': 'segkit.training.losses.DiceLoss'}
    """

    def __init__(
        self,
        model: dict,
        loss: dict,
        optimizer: dict,
        data: dict,
        scheduler: dict | None = None,
        trusted_modules: Sequence[str] = (),
    ) -> None:
        """`data` is the data config: the one place that holds num_classes, class_names, palette and
        ignore_index; it also lets evaluation rebuild the datamodule from the checkpoint alone.

        `trusted_modules` (the command's, see segkit.config.trust) is not a hyperparameter: a checkpoint never
        carries what it may call."""
        super().__init__()
        self.save_hyperparameters(ignore=["trusted_modules"], logger=False)
        self.trusted_modules = tuple(trusted_modules)
        # Every config checked before the first call, the optimizer's and scheduler's included.
        check_targets(
            {"model": model, "loss": loss, "optimizer": optimizer, "scheduler": scheduler, "data": data},
            source=HPARAMS_SOURCE,
            trusted=self.trusted_modules,
        )
        self.num_classes = int(data["num_classes"])
        self.class_names = list(data["class_names"])
        self.ignore_index = data.get("ignore_index")
        self.task = TaskKind.of(data)
        self.task.check_classes(self.num_classes, self.class_names)
        model = dict(model)
        # The network's output channels follow the task (binary: one logit, the positive class's).
        model["num_classes"] = self.task.out_channels(self.num_classes)
        # Speed switches of the model config, not arguments of the network.
        self.channels_last = bool(model.pop("channels_last", False))
        compile_net = bool(model.pop("compile", False))
        # When the backbone trains (`backbone.freeze`, `unfreeze_at_epoch` ...): the training's, not the network's.
        backbone = dict(model["backbone"]) if isinstance(model.get("backbone"), dict) else {}
        self.freezing = BackboneFreezing.pop_from(backbone)
        if backbone:
            model["backbone"] = backbone
        self.net = safe_instantiate(model, source=HPARAMS_SOURCE, trusted=self.trusted_modules, key="model")
        if self.freezing.freeze:
            self.freezing.apply(self.net.backbone.encoder, epoch=0)  # params/trainable counts what trains first
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        # Kept outside the module tree, so state_dict keys (and checkpoints) stay those of the plain network.
        self.__dict__["compiled_net"] = torch.compile(self.net) if compile_net else None
        self.criterion = safe_instantiate(loss, source=HPARAMS_SOURCE, trusted=self.trusted_modules, key="loss")
        for split in ("train", "val", "test"):
            setattr(self, f"{split}_confusion", confusion_metric(self.num_classes, self.ignore_index, self.task.name))
        self.val_miou_best = MaxMetric()
        # The training epoch's own sums travel in checkpoints: a run stopped mid-epoch and resumed reports the
        # epoch's loss and scores over all its batches, and a resumed run keeps its best score.
        self.train_loss_mean = MeanMetric(nan_strategy="disable")  # "disable": no check, no host sync per step
        for name in ("val_miou_best", *EPOCH_SUMS):
            getattr(self, name).persistent(True)
        # How validation, test and predict turn images into predictions (evaluate.py and predict.py set it;
        # training validates with one plain forward pass). Not a hyperparameter: a checkpoint stays a model.
        self.inference = Inference()
        # predict.py's save_probabilities: predict_step returns the probabilities beside the predictions.
        self.keep_probabilities = False
        # The last summed confusion matrix of each split (rows ground truth), for detailed reports.
        self.last_confusion: dict[str, torch.Tensor] = {}

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, map_location: Any = None, trusted_modules: Sequence[str] = (), **kwargs: Any
    ) -> SegmentationModule:
        """Lightning's loader would call what a checkpoint names (its `_instantiator` hook) and take
        hyperparameters from anywhere; this one is `load_module` (below), which checks first."""
        unsupported = {k for k, v in kwargs.items() if not (k == "weights_only" and v) and not (k == "strict" and v)}
        if unsupported:
            raise TypeError(
                f"SegmentationModule.load_from_checkpoint takes no {sorted(unsupported)}: a checkpoint is rebuilt "
                "from its own hyperparameters only. Fix: call segkit.training.module.load_module(path) and change the "
                "module afterwards."
            )
        module = load_module(checkpoint_path, trusted=trusted_modules)
        return module.to(map_location) if map_location is not None else module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        net = self.compiled_net if self.compiled_net is not None else self.net
        return net(images)

    def setup(self, stage: str) -> None:
        """Lightning's model summary runs `example_input_array` through the model to show FLOPs and sizes (with
        none it prints "Total FLOPs: 0"): one image of the training crop, in the precision's input type (bf16-true
        and the like). None where that pass would first compile the network (minutes)."""
        crop_size = self.hparams.data.get("crop_size")
        if stage == "fit" and crop_size and self.compiled_net is None:
            example = torch.zeros(1, int(self.hparams.data["in_channels"]), *map(int, crop_size))
            self.example_input_array = self.trainer.precision_plugin.convert_input(example)

    def on_fit_start(self) -> None:
        max_epochs = self.trainer.max_epochs
        at = self.freezing.unfreeze_at_epoch
        if at is not None and self.trainer.world_size > 1:
            # DDP synchronises the gradients only of the parameters that required grad when it wrapped the model.
            raise ValueError(
                f"backbone.unfreeze_at_epoch={at} under {self.trainer.world_size} processes: DDP would never "
                "synchronise the gradients of the backbone it wrapped frozen, so the processes' backbones would "
                "drift apart. Fix: train on one device, or backbone.unfreeze_at_epoch=null (a backbone frozen for the "
                "whole run works under DDP)."
            )
        if at is not None and max_epochs is not None and 0 < max_epochs <= at:
            log.warning(
                "backbone.unfreeze_at_epoch=%d but trainer.max_epochs=%d: the backbone stays frozen for the whole run.",
                at,
                max_epochs,
            )

    def on_train_start(self) -> None:
        """Lightning calls no `on_train_epoch_start` for the epoch a run resumes in the middle of: set it here."""
        self._freeze_for_epoch()

    def on_train_epoch_start(self) -> None:
        self._freeze_for_epoch()

    def _freeze_for_epoch(self) -> None:
        """A frozen backbone's `requires_grad` follows the epoch number (recomputed the same way on a resume); from
        the first step of `backbone.unfreeze_at_epoch` the schedule lets its groups' rate ramp up."""
        if not self.freezing.freeze:
            return
        if not self.freezing.apply(self.net.backbone.encoder, self.current_epoch):
            return
        for config in self.trainer.lr_scheduler_configs:
            release = getattr(config.scheduler, "release_held_groups", None)
            if release is not None and release():
                log.info(
                    "The backbone trains from epoch %d (step %d) on, its rate ramping up over %d steps.",
                    self.current_epoch,
                    self.trainer.global_step,
                    self.freezing.unfreeze_warmup_steps,
                )

    def parameter_counts(self) -> dict[str, int]:
        return {
            "params/total": sum(p.numel() for p in self.parameters()),
            "params/trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "params/backbone": sum(p.numel() for p in self.net.backbone.parameters()),
        }

    def _step(self, batch: dict[str, torch.Tensor], split: str) -> tuple[torch.Tensor | None, torch.Tensor]:
        images, masks = batch["image"], batch["mask"]
        loss = None
        if split == "train" or self.inference.is_plain:
            logits = self(images)
            loss = self.criterion(logits, masks)
            preds = self.task.predict(logits, self.inference.threshold)
        else:  # windows or test-time augmentation: averaged probabilities, no training loss to compare
            preds = self.inference.predict(self, images, self.task)
        getattr(self, f"{split}_confusion").update(preds, masks)
        if loss is None:
            return loss, preds
        if split == "train":
            self.log("train/loss_step", loss)  # not on the progress bar: its refresh would read it back every step
            self.train_loss_mean.update(loss.detach(), images.shape[0])
        else:
            self.log(f"{split}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=images.shape[0])
        return loss, preds

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        loss, preds = self._step(batch, "val")
        return {"loss": loss, "preds": preds}

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        loss, preds = self._step(batch, "test")
        return {"loss": loss, "preds": preds}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        if not self.keep_probabilities:
            return {"preds": self.inference.predict(self, batch["image"], self.task), "names": batch["name"]}
        probs = self.inference(self, batch["image"], self.task)
        preds = self.task.decide(probs, self.inference.threshold)
        return {"preds": preds, "probs": probs, "names": batch["name"]}

    def epoch_scores(self, split: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The split's scores from its counts so far (summed over all processes), and as logged (`val/mIoU` ...);
        the counts start again from zero."""
        confusion = getattr(self, f"{split}_confusion")
        matrix = confusion.compute()
        self.last_confusion[split] = matrix.detach().cpu()
        scores = scores_from_confusion(matrix)
        confusion.reset()
        return scores, named_scores(split, scores, self.class_names, self.task.name)

    def _log_epoch_scores(self, split: str) -> dict[str, torch.Tensor]:
        scores, flat = self.epoch_scores(split)
        # Identical on every rank already; sync_dist (a mean of equal values, once per epoch) only keeps
        # Lightning from warning about unsynced epoch-level values under DDP.
        self.log(f"{split}/mIoU", flat.pop(f"{split}/mIoU"), prog_bar=True, sync_dist=True)
        self.log_dict(flat, sync_dist=True)
        return scores

    def on_train_epoch_end(self) -> None:
        self.log("train/loss_epoch", self.train_loss_mean.compute(), sync_dist=True)  # summed over all processes
        self.train_loss_mean.reset()
        self._log_epoch_scores("train")

    def on_validation_epoch_end(self) -> None:
        scores = self._log_epoch_scores("val")
        if not self.trainer.sanity_checking:
            self.val_miou_best.update(scores["mIoU"].float())
        if self.val_miou_best.update_called:
            self.log("val/mIoU_best", self.val_miou_best.compute(), prog_bar=True, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_scores("test")

    # Weight averaging (`callbacks=ema`: Lightning's EMAWeightAveraging) saves the averaged copy of the module as a
    # checkpoint's `state_dict` and the trained module as `current_model_state`; the callback's hooks run before
    # these on save and after them on load.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Only parameters and buffers are averaged: the averaged copy's metric states (`val_miou_best`) are those
        of the start of training, so the checkpoint keeps the run's own."""
        current = checkpoint.get("current_model_state")
        if current is not None:
            averaged = {name for name, _ in self.named_parameters()} | {name for name, _ in self.named_buffers()}
            state = checkpoint["state_dict"]
            for key in state:
                if key not in averaged and key in current:
                    state[key] = current[key]
        self._store_epoch_sums(checkpoint)

    def _epoch_sum_states(self) -> dict[str, torch.Tensor]:
        """The training epoch's running sums (all reduced by summing across processes), by state_dict key."""
        return {
            f"{name}.{state}": getattr(getattr(self, name), state)
            for name in EPOCH_SUMS
            for state in getattr(self, name)._defaults
        }

    def _store_epoch_sums(self, checkpoint: dict[str, Any]) -> None:
        """Under DDP each process holds its own part of the epoch's sums, and the checkpoint is the first
        process's: it stores every process's part (all of them take part in a save), and each takes its own back."""
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            gathered = {key: trainer.strategy.all_gather(value) for key, value in self._epoch_sum_states().items()}
            checkpoint[EPOCH_SUMS_KEY] = {key: value.cpu() for key, value in gathered.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Outside fit (train.py testing the best checkpoint after training), the callback would put the trained
        weights back, so the test would not score the averaged weights that validation chose the checkpoint by
        and evaluate.py loads: there the averaged weights are the model. Resuming a fit is unchanged."""
        trainer = self._trainer
        fitting = trainer is not None and trainer.state.fn == TrainerFn.FITTING
        if "current_model_state" in checkpoint and not fitting:
            checkpoint["current_model_state"] = checkpoint["state_dict"]
        per_process = checkpoint.get(EPOCH_SUMS_KEY)  # see _store_epoch_sums
        if trainer is not None and per_process and len(next(iter(per_process.values()))) == trainer.world_size:
            for key, values in per_process.items():
                for state in (checkpoint["state_dict"], checkpoint.get("current_model_state") or {}):
                    if key in state:
                        state[key] = values[trainer.global_rank]

    def configure_optimizers(self) -> Any:
        trust = {"source": HPARAMS_SOURCE, "trusted": self.trusted_modules}
        optimizer_config = self.hparams.optimizer
        unfreezes = self.freezing.unfreezes
        encoder = self.net.backbone.encoder if unfreezes else None
        if unfreezes and optimizer_config.get(PARAM_GROUPS_KEY) is None:  # the backbone needs groups of its own
            optimizer_config = {**optimizer_config, PARAM_GROUPS_KEY: {}}
        # `optimizer.param_groups` (backbone lr multiplier, no decay on norms, layer decay) shapes the groups; a
        # backbone that unfreezes later is in them from the start (frozen: no gradient, so no update).
        with all_trainable(encoder) if unfreezes else contextlib.nullcontext():
            optimizer = build_optimizer(
                optimizer_config, self, lambda config: safe_instantiate(config, key="optimizer", **trust)
            )
        if self.hparams.scheduler:
            scheduler = safe_instantiate(self.hparams.scheduler, key="scheduler", **trust)(
                optimizer=optimizer,
                total_steps=self.trainer.estimated_stepping_batches,  # inf under max_time alone
            )
        elif unfreezes:  # a constant rate (x 1 at every step), which holds the backbone's groups until they unfreeze
            scheduler = WarmupDecayLR(optimizer, float("inf"), "poly", power=0.0)
        else:
            return optimizer
        if unfreezes:
            if not hasattr(scheduler, "hold_groups"):
                raise TypeError(
                    f"backbone.unfreeze_at_epoch needs a segkit schedule, which holds the backbone's rate at 0 until "
                    f"it unfreezes; {type(scheduler).__name__} cannot. Fix: scheduler=poly, scheduler=cosine or "
                    "scheduler=none."
                )
            scheduler.hold_groups(backbone_group_indices(optimizer, encoder), self.freezing.unfreeze_warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def build_module(cfg: DictConfig) -> SegmentationModule:
    """The module a composed train config describes, its configs resolved to plain data (what the hyperparameters
    and so checkpoints hold); the config's `trusted_modules` are the command's.

    Args:
        cfg: a train config (conf/train.yaml, composed): its `model`, `loss`, `optimizer`, `scheduler` and `data`.

    Example:
        >>> from hydra import compose, initialize_config_dir
        >>> from segkit.config.hydra_setup import CONFIG_DIR, register_resolvers
        >>> from segkit.training.module import build_module
        >>> register_resolvers()
        >>> with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):  # doctest: +SKIP
        ...     cfg = compose("train", overrides=["model=fcn", "loss=dice"])
        >>> build_module(cfg).criterion  # doctest: +SKIP
        DiceLoss()
    """

    def plain(node: DictConfig | None) -> Any:
        return None if node is None else OmegaConf.to_container(node, resolve=True)

    return SegmentationModule(
        model=plain(cfg.model),
        loss=plain(cfg.loss),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")),
        data=plain(cfg.data),
        trusted_modules=tuple(cfg.get("trusted_modules") or ()),
    )


def save_module(module: SegmentationModule, path: str | Path) -> Path:
    """`module` as a checkpoint that `load_module` (and so evaluate.py, predict.py, export.py) reads: its weights
    and hyperparameters, as a best checkpoint holds them, without training state. For models that were never
    trained: the large-image benchmark's, and tests'."""
    state = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save({**state, "pytorch-lightning_version": L.__version__}, path)
    return Path(path)


def load_module(path: str | Path, trusted: Sequence[str] = ()) -> SegmentationModule:
    """The trained module of a checkpoint, on the CPU, in eval mode: the one way segkit rebuilds a model from a file
    (evaluate.py, predict.py, export.py; `SegmentationModule.load_from_checkpoint` is this too).

    The file is read as data (`weights_only=True`), its stored configs are read through the table of moved
    addresses (segkit.moved) and checked against the allow-list (segkit.config.trust) before anything is built, and
    the network is rebuilt from them without reaching for pretrained weights: the state dict holds every weight.

    Args:
        path: a checkpoint written by train.py (`<run dir>/checkpoints/last.ckpt` or a `best-*.ckpt`).
        trusted: the current command's `trusted_modules` (never the checkpoint's): packages besides segkit's own
            whose classes the stored configs may name.

    Raises `CheckpointError` (a file that is no segkit checkpoint, or cut short) or `UntrustedTargetError`, each
    naming the file and the fix.

    Example:
        >>> import torch
        >>> from segkit.training.module import load_module
        >>> module = load_module("logs/train/runs/<run>/checkpoints/last.ckpt")  # doctest: +SKIP
        >>> probabilities = module.inference(module, torch.rand(1, 3, 512, 512), module.task)  # doctest: +SKIP
        >>> logits = module.net(torch.rand(1, 3, 512, 512))  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    checkpoint = read_checkpoint(path)
    hparams = with_moved_targets(stored_hparams(checkpoint, path))  # an older segkit's addresses: segkit.moved
    check_targets(hparams, source=f"checkpoint {path}", trusted=trusted, resolved=True)
    module = SegmentationModule(**without_weight_sources(hparams), trusted_modules=trusted)
    module.save_hyperparameters(copy.deepcopy(hparams), logger=False)  # the record as trained
    load_state(module, checkpoint["state_dict"], path)
    return module.eval()
