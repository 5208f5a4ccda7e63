"""Wall-clock timing of a callable: median/min/spread over repeated runs, and peak memory.

On CUDA, kernels are asynchronous: each run is bracketed by ``torch.cuda.synchronize`` so the clock measures the
GPU work, not the launch. Clock and sync are injectable so tests can feed known times.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Milliseconds per run over ``runs`` runs (after ``warmup`` untimed ones)."""

    ms_median: float
    ms_min: float
    #: max - min, in ms: how noisy the machine was.
    ms_spread: float
    runs: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def default_sync(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for queued work on ``device`` (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_fn(
    fn: Callable[[], object],
    warmup: int = 3,
    runs: int = 10,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] = lambda: None,
) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``runs`` times timed with ``clock`` (seconds); ``sync`` is called
    before reading the clock each time so asynchronous devices are measured fully."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        start = clock()
        fn()
        sync()
        times.append((clock() - start) * 1e3)
    return Timing(statistics.median(times), min(times), max(times) - min(times), runs)


def time_cuda_events(fn: Callable[[], object], warmup: int = 3, runs: int = 10) -> Timing:
    """Like ``time_fn`` with CUDA events (GPU-side timestamps: no host jitter in the measurement)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return Timing(statistics.median(times), min(times), max(times) - min(times), runs)


def reset_peak_memory(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak allocated CUDA memory since the last reset, or the process's peak RSS on CPU (MiB).

    CPU peak RSS cannot be reset, so it is an upper bound over the whole process, not per measurement.
    """
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux
