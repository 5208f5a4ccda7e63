"""Wall-clock timing of a callable: median/min/spread over repeated runs, and peak memory.

On CUDA, kernels are asynchronous: each run is bracketed by ``torch.cuda.synchronize`` (``time_fn``) or CUDA events
(``time_cuda_events``) so the clock measures the GPU work, not the launch. Clock and sync are injectable so tests can
feed known times.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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


def summarize(times_ms: list[float]) -> Timing:
    """Median, min and spread (max - min) of per-run times in ms."""
    if not times_ms:
        raise ValueError("expected at least one time, got none")
    return Timing(statistics.median(times_ms), min(times_ms), max(times_ms) - min(times_ms), len(times_ms))


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
    return summarize(times)


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
    return summarize(times)


# -- memory ------------------------------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so the next allocation shows up as RSS growth."""
    name = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


class CpuPeak:
    """Peak resident-set growth (bytes) of this process over a block, on Linux via ``/proc/self/clear_refs``.

    ``start()`` trims the heap, resets the kernel's high-water mark (VmHWM) and records VmRSS; ``growth()`` is
    VmHWM - that baseline. Where the mark cannot be reset (not Linux, no permission), ``exact`` is False and
    ``growth()`` falls back to ``ru_maxrss`` - baseline: an upper bound, since ``ru_maxrss`` never goes down.
    """

    def __init__(self) -> None:
        self.baseline = 0
        self.exact = False

    def start(self) -> None:
        _trim_heap()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5: reset the peak RSS (Linux >= 4.0)
            rss = _proc_status_kib("VmRSS")
            self.exact = rss is not None
            self.baseline = (rss or 0) * 1024
        except OSError:
            self.exact = False
            self.baseline = _ru_maxrss_bytes()

    def growth(self) -> int:
        if self.exact:
            hwm = _proc_status_kib("VmHWM")
            if hwm is not None:
                return max(0, hwm * 1024 - self.baseline)
        return max(0, _ru_maxrss_bytes() - self.baseline)


def _ru_maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux
