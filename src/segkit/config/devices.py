"""Device settings checked at start-up, before W&B, data or models: `check_devices(cfg)` (after
`segkit.config.checks.validate`). What this machine cannot run fails within seconds, naming the override that fixes it;
what has one obvious meaning here is adapted with one log line; what runs but slowly is warned about.

- Refused (`DeviceError`, a `ConfigError`, all problems in one message): a GPU trainer (`trainer=gpu`, `trainer=ddp`,
  `trainer.accelerator=gpu`) without a CUDA GPU; more GPUs (or GPU ids) than the machine has; `16-mixed` on CPU
  (Lightning would silently run bf16 instead); `model.compile=true` where torch.compile cannot compile (no C++
  compiler for the CPU backend, no Triton or a GPU older than CUDA capability 7.0 for the GPU backend, an
  unsupported Python).
- Adapted, one log line each: `trainer.sync_batchnorm=true` off a CUDA GPU is turned off (PyTorch's SyncBatchNorm
  has no CPU implementation; `trainer=ddp trainer.accelerator=cpu` is the CPU rehearsal of a multi-GPU run, and each
  process then normalises with its own batch statistics); `bf16-mixed` on a GPU without native bf16 (before Ampere:
  T4, V100) becomes `16-mixed`, fp16 with loss scaling.
- Warned: bf16 on a CPU without bf16 instructions (emulated, several times slower than 32-true); more CPU processes
  (`trainer.devices`) than usable cores.

The machine's facts come from `segkit.machine.Machine` (tests pass their own); `data.num_workers=auto` is the data's
to resolve (segkit.machine), for the processes and device of the Trainer it is attached to.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig

from segkit.config.checks import ConfigError
from segkit.machine import Machine

log = logging.getLogger(__name__)


class DeviceError(ConfigError):
    """A device setting this machine cannot run, found before anything is built."""


def check_devices(cfg: DictConfig, machine: Machine | None = None) -> DictConfig:
    """Checks `cfg.trainer` (and `cfg.model.compile`) against this machine: raises one `DeviceError` listing every
    setting that cannot run, adapts in place what has one meaning here (logged), warns about what is slow. Returns
    `cfg`. A config without a trainer passes unchanged."""
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig):
        return cfg
    machine = machine or Machine()
    errors: list[str] = []
    notes: list[tuple[int, str]] = []  # (logging level, message): said once the settings are known to run
    kind = _kind(trainer, machine, errors)
    _check_devices_count(trainer, kind, machine, errors, notes)
    # Asking a GPU its capability initialises CUDA, after which Lightning cannot fork processes (ddp_fork,
    # ddp_notebook): those strategies leave bf16 and compile to Lightning.
    forking = kind == "cuda" and any(word in str(trainer.get("strategy", "")) for word in ("fork", "notebook"))
    if kind is not None:
        _check_sync_batchnorm(trainer, kind, notes)
    if kind is not None and not forking:
        _check_precision(trainer, kind, machine, errors, notes)
        _check_compile(cfg, kind, machine, errors)
    if errors:
        head = "Device setting error:" if len(errors) == 1 else f"{len(errors)} device setting errors:"
        raise DeviceError("\n".join([head, *(f"  - {e}" for e in errors)]))
    if _rank_zero():  # a run of N processes says each adaptation once
        for level, message in notes:
            log.log(level, message)
    return cfg


def _kind(trainer: DictConfig, machine: Machine, errors: list[str]) -> str | None:
    """ "cuda", "cpu", "mps", or None for what is left to Lightning (TPUs, custom accelerators, a GPU trainer
    without a GPU, which is recorded in `errors`)."""
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator in ("gpu", "cuda"):
        if machine.cuda_devices > 0:
            return "cuda"
        if accelerator == "gpu" and machine.mps:
            return "mps"
        errors.append(
            f"trainer.accelerator={accelerator} (what trainer=gpu and trainer=ddp set) but this machine has no CUDA "
            f"GPU ({_why_no_cuda()}). Fix: add trainer.accelerator=cpu (e.g. `trainer=ddp trainer.accelerator=cpu "
            "trainer.devices=2` rehearses a multi-GPU run with CPU processes), or run on a machine with a GPU."
        )
        return None
    if accelerator == "auto":
        return "cuda" if machine.cuda_devices > 0 else "mps" if machine.mps else "cpu"
    return accelerator if accelerator in ("cpu", "mps") else None


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is built without CUDA"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    return "torch.cuda.is_available() is False: no NVIDIA GPU or driver is visible"


def _requested(devices: Any) -> int | list[int] | str:
    """Lightning's reading of `trainer.devices`: a count, a list of GPU ids, or "all" (auto, -1)."""
    if isinstance(devices, (list, tuple, ListConfig)):
        return [int(d) for d in devices]
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return "all"
    if "," in text:
        return [int(d) for d in text.split(",") if d.strip()]
    return int(text)


def _check_devices_count(
    trainer: DictConfig, kind: str | None, machine: Machine, errors: list[str], notes: list[tuple[int, str]]
) -> int:
    """The processes the run starts on this machine (1 when it cannot tell), recording a count it cannot meet."""
    try:
        wanted = _requested(trainer.get("devices", 1))
    except (TypeError, ValueError):  # segkit.config.checks.validate reports malformed values
        return 1
    shown = _show(trainer.get("devices"))
    if kind == "cuda":
        have = machine.cuda_devices
        if wanted == "all":
            return have
        if isinstance(wanted, list):
            missing = [i for i in wanted if i >= have]
            if missing:
                errors.append(
                    f"trainer.devices={shown} names GPU {', '.join(map(str, missing))}, but this machine has "
                    f"{have} (ids 0..{have - 1}). Fix: trainer.devices={min(len(wanted), have)} (a count), or ids "
                    f"below {have}."
                )
            return len(wanted)
        if wanted > have:
            errors.append(
                f"trainer.devices={shown} asks for {wanted} GPUs, but this machine has {have} ({machine.gpu_name}). "
                f"Fix: trainer.devices={have} (or trainer.devices=auto: every GPU there is)."
            )
        return wanted
    if kind == "cpu":
        if wanted == "all":  # Lightning runs one CPU process for auto
            return 1
        if isinstance(wanted, list):
            errors.append(
                f"trainer.devices={shown} lists device ids, but on CPU trainer.devices is a number of processes. "
                f"Fix: trainer.devices={len(wanted)}."
            )
            return len(wanted)
        if wanted > machine.cpus:
            notes.append(
                (
                    logging.WARNING,
                    f"trainer.devices={shown} starts {wanted} CPU processes on "
                    f"{machine.cpus} usable cores: they will slow each other down. Fix: "
                    f"trainer.devices={machine.cpus} or fewer.",
                )
            )
        return wanted
    return wanted if isinstance(wanted, int) else 1


def _check_sync_batchnorm(trainer: DictConfig, kind: str, notes: list[tuple[int, str]]) -> None:
    if kind != "cuda" and bool(trainer.get("sync_batchnorm", False)):
        trainer.sync_batchnorm = False
        notes.append(
            (
                logging.INFO,
                f"trainer.sync_batchnorm=true needs CUDA GPUs (PyTorch's SyncBatchNorm refuses "
                f"{kind.upper()} tensors): turned off, so each process normalises with its own batch "
                "statistics.",
            )
        )


def _check_precision(
    trainer: DictConfig, kind: str, machine: Machine, errors: list[str], notes: list[tuple[int, str]]
) -> None:
    precision = str(trainer.get("precision", "32-true"))
    if kind == "cpu" and precision in ("16-mixed", "16"):
        errors.append(
            f"trainer.precision={precision} (fp16 with loss scaling) needs a CUDA GPU; on CPU Lightning would "
            "silently run bf16-mixed instead. Fix: trainer.precision=bf16-mixed (mixed precision on CPU) or "
            "trainer.precision=32-true."
        )
    elif kind == "cpu" and precision.startswith("bf16") and not machine.cpu_bf16:
        notes.append(
            (
                logging.WARNING,
                f"trainer.precision={precision} on a CPU without bf16 instructions "
                "(AVX512-BF16 or AMX): bf16 is emulated, several times slower than 32-bit. Fix: "
                "trainer.precision=32-true.",
            )
        )
    elif kind == "cuda" and precision.startswith("bf16") and not machine.gpu_bf16:
        gpu = f"{machine.gpu_name} (CUDA capability {'.'.join(map(str, machine.gpu_capability))})"
        if precision in ("bf16-mixed", "bf16"):
            trainer.precision = "16-mixed"
            notes.append(
                (
                    logging.INFO,
                    f"{gpu} has no native bf16: trainer.precision={precision} became 16-mixed "
                    "(fp16 with loss scaling).",
                )
            )
        else:
            notes.append(
                (
                    logging.WARNING,
                    f"trainer.precision={precision} on {gpu}, which has no native bf16: "
                    "emulated and slow. Fix: trainer.precision=16-mixed.",
                )
            )


def _check_compile(cfg: DictConfig, kind: str, machine: Machine, errors: list[str]) -> None:
    model = cfg.get("model")
    if not isinstance(model, DictConfig) or not bool(model.get("compile", False)) or kind not in ("cuda", "cpu"):
        return
    problem = machine.compile_problem(kind)
    if problem:
        errors.append(f"model.compile=true cannot run here: {problem}. Fix: model.compile=false.")


def _show(value: Any) -> str:
    return str(list(value)) if isinstance(value, ListConfig) else str(value)


def _rank_zero() -> bool:
    """Whether this is the first process of a run (Lightning's order of rank variables)."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if name in os.environ:
            return os.environ[name] == "0"
    return True
