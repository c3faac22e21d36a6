"""Timing and memory helpers shared by the benchmarks."""

from __future__ import annotations

import contextlib
import resource
import time
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """CUDA: the allocator's peak; CPU: the process's peak RSS (Linux lets a process reset it)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepTimer:
    """Times of the steps between successive `tick()`s, the device synchronised at each. The median step is the
    figure reported: on a shared machine one stalled step should not decide a comparison."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ticks: list[float] = []

    def tick(self) -> None:
        sync(self.device)
        self.ticks.append(time.perf_counter())

    @property
    def median_step(self) -> float:
        steps = sorted(b - a for a, b in zip(self.ticks, self.ticks[1:]))
        return steps[len(steps) // 2]


def autocast(device: torch.device, precision: str):
    """The autocast context a Lightning precision string means, for the bare loop and inference."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()
