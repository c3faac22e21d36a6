"""What this machine offers (`Machine`: CUDA GPUs and their capability, bf16, the compilers torch.compile needs, the
CPUs this process may use), and what data loading makes of it: `data.num_workers=auto` and pinned memory.

A leaf that imports nothing of segkit: segkit.config.devices checks a run's device settings against a Machine,
segkit.data's loaders size themselves with it (for the processes and device of the Trainer they are attached to),
segkit.bench records it.
"""

from __future__ import annotations

import os
import re
import shutil
from functools import cached_property
from typing import Any

import torch

# data.num_workers=auto: at most this many loader processes per training process.
MAX_AUTO_WORKERS = 8
# ... and on a CPU run, where the workers take cores from the model's own computation (and loading was measured not
# to be the bottleneck: docs/performance.md), at most this many.
MAX_AUTO_WORKERS_CPU = 2


class Machine:
    """What this machine offers. Each fact is looked up when first asked, so CUDA is queried only for settings that
    need it; tests pass facts in instead: `Machine(cuda_devices=0, cpu_bf16=False)`."""

    def __init__(self, **facts: Any) -> None:
        self.__dict__.update(facts)  # cached_property reads the instance dict first

    @cached_property
    def cuda_devices(self) -> int:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    @cached_property
    def mps(self) -> bool:
        backend = getattr(torch.backends, "mps", None)
        return bool(backend is not None and backend.is_available())

    @cached_property
    def gpu_index(self) -> int:
        """The GPU this process uses (its local rank under torchrun, SLURM or Lightning's launcher); GPUs of one
        machine are assumed alike."""
        rank = os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID") or "0"
        return min(int(rank) if rank.isdigit() else 0, max(self.cuda_devices - 1, 0))

    @cached_property
    def gpu_name(self) -> str:
        return torch.cuda.get_device_name(self.gpu_index)

    @cached_property
    def gpu_capability(self) -> tuple[int, int]:
        return tuple(torch.cuda.get_device_capability(self.gpu_index))

    @cached_property
    def gpu_bf16(self) -> bool:
        """Native bf16 (Ampere and later). `torch.cuda.is_bf16_supported()` alone also says yes where bf16 is only
        emulated (T4, V100), which is slower than fp16."""
        return self.gpu_capability >= (8, 0)

    @cached_property
    def cpu_bf16(self) -> bool:
        """bf16 instructions (AVX512-BF16 or AMX) that oneDNN uses; True when it cannot be told."""
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return True

    @cached_property
    def cpus(self) -> int:
        """CPUs this process may run on (its affinity: a SLURM or container limit), not the machine's total."""
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1

    @cached_property
    def dynamo_problem(self) -> str | None:
        try:
            from torch._dynamo.eval_frame import check_if_dynamo_supported

            check_if_dynamo_supported()
        except ImportError:
            return None
        except Exception as err:  # noqa: BLE001 - its message says what is unsupported
            return str(err)
        return None

    @cached_property
    def triton(self) -> bool:
        try:
            from torch.utils._triton import has_triton_package
        except ImportError:
            return True
        return bool(has_triton_package())

    @cached_property
    def cpp_compiler(self) -> str | None:
        """The C++ compiler torch.compile's CPU backend would use, or None."""
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            return get_cpp_compiler()
        except ImportError:
            return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
        except Exception:  # noqa: BLE001 - torch raises its own "no compiler found" errors
            return None

    def compile_problem(self, kind: str) -> str | None:
        """Why torch.compile cannot compile for `kind` ("cuda" or "cpu") here, or None."""
        if self.dynamo_problem:
            return f"torch.compile does not support this set-up ({self.dynamo_problem})"
        if kind == "cuda":
            if self.gpu_capability < (7, 0):
                major, minor = self.gpu_capability
                return (
                    f"its GPU backend (Triton) needs CUDA capability 7.0 or newer, and {self.gpu_name} has "
                    f"{major}.{minor}"
                )
            if not self.triton:
                return "its GPU backend needs the triton package, which is not installed"
        if kind == "cpu" and not self.cpp_compiler:
            return "its CPU backend needs a C++ compiler and none was found (install g++, or set CXX)"
        return None


def processes_per_machine(planned: int = 1) -> int:
    """Training processes on this machine: torchrun's and SLURM's own count, else `planned` (the run's: its
    Trainer's devices on this machine)."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        match = re.match(r"\d+", os.environ.get(name, ""))  # SLURM writes e.g. "4(x2)"
        if match and int(match.group()) > 0:
            return int(match.group())
    return max(1, int(planned))


def auto_num_workers(machine: Machine | None = None, processes: int = 1, gpu: bool | None = None) -> int:
    """`data.num_workers=auto`: the usable CPUs split between this machine's training processes (`processes`, the
    run's, unless torchrun or SLURM say), at most 8 loader processes each (2 on a CPU run, whose cores the model
    itself needs; `gpu` None: whether this machine has CUDA); 0 (load in the main process) when a process has fewer
    than 2 CPUs, where one worker was measured slower than none."""
    machine = machine or Machine()
    per_process = machine.cpus // processes_per_machine(processes)
    gpu = machine.cuda_devices > 0 if gpu is None else gpu
    cap = MAX_AUTO_WORKERS if gpu else MAX_AUTO_WORKERS_CPU
    return min(cap, per_process) if per_process >= 2 else 0


def default_pin_memory(gpu: bool | None = None) -> bool:
    """Loaders put batches in page-locked memory when the run trains on a CUDA GPU (`gpu`; None: whenever CUDA is
    there), so that Lightning's copy to the GPU (non_blocking=True) overlaps with computation."""
    return torch.cuda.is_available() if gpu is None else bool(gpu)


def resolve_num_workers(value: Any, processes: int = 1, gpu: bool | None = None) -> int:
    """A DataLoader's worker count from `data.num_workers`: a whole number, or "auto" (`auto_num_workers`)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return auto_num_workers(processes=processes, gpu=gpu)
    return int(value)
