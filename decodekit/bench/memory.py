"""Peak memory of one call, measured the same way for every method.

On the CPU: the process's resident set size (RSS), sampled every 5 milliseconds from
/proc/self/statm by a background thread while the call runs. Two figures: the peak RSS during the
call (the whole process, model weights included) and what the call added over the RSS just before
it. On CUDA: torch.cuda.max_memory_allocated after a reset, and that minus the allocation before the
call. Where neither is available the figures are None. Allocators keep memory that was freed, so
both figures depend on what ran before in the process: read them as rough, not as exact costs.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from typing import Any, Callable, TypeVar

import torch

T = TypeVar("T")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_STATM = "/proc/self/statm"
MIB = 1024 * 1024


def current_rss() -> int | None:
    """Resident set size of this process in bytes, or None where /proc is missing."""
    try:
        with open(_STATM, "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def process_peak_rss() -> int:
    """The process's peak RSS so far in bytes (getrusage: kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def method_name(device: torch.device) -> str:
    if device.type == "cuda":
        return ("peak: torch.cuda.max_memory_allocated during the call; added: that minus the allocation "
                "before the call")
    if current_rss() is not None:
        return ("peak: the process's resident set size (RSS) during the call, sampled every 5 ms from "
                "/proc/self/statm (model weights included); added: that minus the RSS just before the call")
    return "not measured (no /proc/self/statm on this system)"


class _RSSSampler(threading.Thread):
    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak, self.done = interval, current_rss() or 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.peak = max(self.peak, current_rss() or 0)


def measure(fn: Callable[[], T], device: torch.device, interval: float = 0.005
            ) -> tuple[T, int | None, int | None]:
    """Run fn(); return its result, the peak memory during it and what it added over the memory before it.

    Both in bytes, None where unmeasured. The peak includes what was resident before (the model's weights).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return result, peak, max(0, peak - before)
    before = current_rss()
    if before is None:
        return fn(), None, None
    sampler = _RSSSampler(interval)
    sampler.start()
    try:
        result = fn()
    finally:
        sampler.done.set()
        sampler.join()
    peak = max(sampler.peak, current_rss() or 0)
    return result, peak, max(0, peak - before)


def sync(device: Any) -> None:
    """Wait for queued GPU work so that wall-clock timings are honest (a no-op on the CPU)."""
    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)
