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


class Stopwatch:
    """Seconds between `start()` and `stop()`, with the device synchronised at both ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.begin = self.seconds = 0.0

    def start(self) -> None:
        sync(self.device)
        self.begin = time.perf_counter()

    def stop(self) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self.begin


def autocast(device: torch.device, precision: str):
    """The autocast context a Lightning precision string means, for the bare loop and inference."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()
