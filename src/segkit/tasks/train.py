"""Train a segmentation model from a composed config; returns the run's metrics as floats."""

from __future__ import annotations

import logging
import signal
import time
import warnings
from pathlib import Path

import lightning as L
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from segkit.config.checks import validate
from segkit.config.devices import check_devices
from segkit.config.trust import check_targets
from segkit.runs.atomic import atomic_write_text, remove_leftovers, write_json
from segkit.runs.checkpoints import read_checkpoint
from segkit.runs.console import EpochLine, closing_lines, quiet_known_noise
from segkit.runs.epoch_end_resume import ResumeIntoEpochEnd, batches_done, resumes_into_validation
from segkit.runs.loggers import CSVLogger, read_rows
from segkit.runs.random_state import RandomStates
from segkit.runs.resume import HPC_CHECKPOINTS, LAST_CHECKPOINT, check_not_finished, plan_of_run, wandb_run_id
from segkit.runs.stop import RunStopped, StopAndSave
from segkit.tasks.common import build_trainer, finish_wandb, float_metrics, plain, print_table, split_metrics
from segkit.training.module import build_module

log = logging.getLogger(__name__)


TRAIN_SOURCE = "the train config (conf/, the command line and, when resuming in place, the run's recorded overrides)"


def trusted_modules(cfg: DictConfig) -> tuple[str, ...]:
    return tuple(cfg.get("trusted_modules") or ())


def train(cfg: DictConfig) -> dict[str, float]:
    validate(cfg, "train")  # values and targets checked before anything is written, read or called
    check_devices(cfg)  # device settings this machine cannot run fail here, before W&B, data or model
    check_targets(cfg, source=TRAIN_SOURCE, trusted=trusted_modules(cfg))
    warn_if_last_checkpoint_loses_its_epoch_end(cfg)
    output_dir = Path(cfg.paths.output_dir)
    resume = plan_of_run(output_dir, cfg.paths.runs_dir, cfg.get("ckpt_path"))
    saved = read_checkpoint(resume.checkpoint) if resume.checkpoint else None  # a corrupt file is named now
    check_not_finished(resume, cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps"))
    quiet_known_noise()
    if cfg.get("seed") is not None:  # seed 0 is a seed
        L.seed_everything(cfg.seed, workers=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    resumed_step = prepare_resume(cfg, output_dir, saved, resume.checkpoint) if resume.in_place else None

    datamodule = instantiate(cfg.data)
    datamodule.test_after_fit = bool(cfg.get("test"))  # a missing test split stops the run now, not after fitting
    module = build_module(cfg)
    # Part of what a run promises, not options: exact resume and a checkpoint on SIGTERM / Ctrl-C.
    trainer = build_trainer(
        cfg, [RandomStates(), ResumeIntoEpochEnd(), StopAndSave(output_dir / LAST_CHECKPOINT), EpochLine()]
    )
    if resumed_step is not None:
        epoch_end = resumes_into_validation(trainer, saved)
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.forget_from(resumed_step, epoch_end=epoch_end)
    hparams = {**plain(cfg), **module.parameter_counts(), "output_dir": str(output_dir)}
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)

    try:
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():  # it is: the datamodule's state puts it where the stop left it
                warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
                if resume.in_place or any(output_dir.glob(HPC_CHECKPOINTS)):  # its own, which it continues
                    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
                trainer.fit(module, datamodule=datamodule, ckpt_path=resume.checkpoint, weights_only=True)
        except RunStopped as stop:
            # Saved and stopping: a later SIGTERM (torchrun's agent passing the stop on to the other processes) must
            # not cut the exit short. StopAndSave ignores it from its save on; Lightning's teardown undid that.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if trainer.is_global_zero:
                print(f"{stop} Resume with: python train.py ckpt_path={output_dir}")
            raise SystemExit(stop.exit_code) from None
        except SIGTERMException:  # Lightning's own stop, before training started: nothing to save
            raise SystemExit(128 + signal.SIGTERM) from None
        fit_s = time.perf_counter() - start
        metrics = {**history_metrics(trainer), **float_metrics(trainer.callback_metrics), "time/fit_s": fit_s}
        best_path, last_path = checkpoint_paths(trainer)
        if cfg.get("test"):
            trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, weights_only=True)
            metrics.update(split_metrics(trainer.callback_metrics, "test"))
        summary = {
            "metrics": metrics,
            "best_checkpoint": best_path,
            "last_checkpoint": last_path,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "resumed_from": str(resume.checkpoint) if resume.checkpoint else None,
        }
        if trainer.is_global_zero:  # written last: its presence means the run finished
            write_json(output_dir / "metrics.json", summary)
        if trainer.world_size > 1:  # every rank's own view, to check that they agree
            write_json(output_dir / "ranks" / f"metrics.rank{trainer.global_rank}.json", summary)
    finally:
        finish_wandb()
    if trainer.is_global_zero:  # last, so that it is not buried under W&B's summary
        headline = {k: v for k, v in metrics.items() if k.count("/") == 1 and not k.startswith("train/")}
        print_table("Final scores", headline)
        print("\n".join(closing_lines(output_dir, best_path, trainer.loggers)))
    return metrics


def prepare_resume(cfg: DictConfig, run: Path, saved: dict, checkpoint: Path) -> int:
    """Continuing a run in place from `checkpoint` (its contents `saved`): temporary files a killed save left are
    removed, the resume record says where training continues, the run logs to its own W&B run (the id W&B
    recorded in the run directory) and its own MLflow run (the one whose `output_dir` param is this run), and
    TensorBoard hides what the interrupted process logged after the checkpoint (`purge_step`). Returns the
    checkpoint's global step."""
    for leftover in remove_leftovers(run / LAST_CHECKPOINT.parent):
        log.info("Removed %s, left by a process killed while saving.", leftover)
    resumed_step = int(saved["global_step"])
    record_resume(run, saved, checkpoint)
    loggers = cfg.get("logger") or {}
    wandb_cfg, tensorboard_cfg = loggers.get("wandb"), loggers.get("tensorboard")
    run_id = wandb_run_id(run)
    if wandb_cfg is not None and run_id and wandb_cfg.get("id") is None:
        with open_dict(wandb_cfg):
            wandb_cfg.id, wandb_cfg.resume = run_id, "allow"
    if tensorboard_cfg is not None:
        with open_dict(tensorboard_cfg):
            tensorboard_cfg.purge_step = resumed_step
    mlflow_cfg = loggers.get("mlflow")
    if mlflow_cfg is not None and mlflow_cfg.get("run_id") is None:
        with open_dict(mlflow_cfg):
            mlflow_cfg.continue_run_of = str(run)
    return resumed_step


def record_resume(run: Path, saved: dict, checkpoint: Path) -> None:
    """`resumed_from.yaml` in this resume's record (`.hydra/resume-<time>/`, beside its overrides) and a log line:
    the checkpoint, and the epoch, step and batches of that epoch already trained that training continues from."""
    where = {
        "checkpoint": str(checkpoint),
        "epoch": int(saved["epoch"]),
        "global_step": int(saved["global_step"]),
        "batches_of_epoch_done": batches_done(saved.get("loops") or {}),
    }
    log.info(
        "Resuming %s from %s: epoch %d, step %d, %d training batches of that epoch done.",
        run,
        checkpoint.name,
        where["epoch"],
        where["global_step"],
        where["batches_of_epoch_done"],
    )
    subdir = HydraConfig.get().output_subdir if HydraConfig.initialized() else None
    if subdir and Path(subdir).name.startswith("resume-"):
        atomic_write_text(run / subdir / "resumed_from.yaml", yaml.safe_dump(where, sort_keys=False))


def warn_if_last_checkpoint_loses_its_epoch_end(cfg: DictConfig) -> None:
    """`+callbacks.last_checkpoint.every_n_train_steps=N` looks like "also every N steps" but, Lightning's
    ModelCheckpoint taking one trigger, means "only every N steps": last.ckpt is no longer written after validation."""
    last = (cfg.get("callbacks") or {}).get("last_checkpoint") or {}
    triggers = [key for key in ("every_n_train_steps", "train_time_interval") if last.get(key)]
    if triggers:
        log.warning(
            "callbacks.last_checkpoint.%s replaces its save after every validation (a ModelCheckpoint takes one "
            "trigger). For last.ckpt mid-epoch as well: callbacks.periodic_checkpoint.%s instead.",
            triggers[0],
            triggers[0],
        )


def history_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The last value of every metric in the run's metrics.csv: a resumed run's summary covers the whole run, not
    only what its own process logged."""
    csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
    path = Path(csv_logger.log_dir) / "metrics.csv" if csv_logger is not None else None
    if path is None or not path.is_file():
        return {}
    last: dict[str, float] = {}
    for row in read_rows(str(path))[1]:
        last.update({k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")})
    return last


def checkpoint_paths(trainer: L.Trainer) -> tuple[str, str]:
    """(best, last): the first monitored checkpoint callback's best file and the unmonitored one's latest."""
    callbacks = trainer.checkpoint_callbacks
    best = next((cb.best_model_path for cb in callbacks if cb.monitor is not None), "")
    last = next((cb.best_model_path for cb in callbacks if cb.monitor is None), "")
    return best, last


def optimized_value(metrics: dict[str, float], name: str | None) -> float | None:
    """The value a sweeper optimises; a clear error when the config names a metric the run never logged."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric '{name}' was not logged. Logged metrics: {', '.join(sorted(metrics))}.")
    return metrics[name]
