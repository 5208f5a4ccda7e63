"""Memory of one decode: out-of-memory errors, live tensor bytes, peak measurement, the budget, and the per-decoder
probe (peak bytes per latent pixel) the planner scales."""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fastdecoders.io import available_memory
from fastdecoders.models.protocol import TileJob

#: side of the probe used to measure bytes per latent pixel (latent pixels; 16 -> 128² pixels at f8).
PROBE_SIZE = 16
#: fraction of free memory the automatic choice plans to use when no ``max_memory_bytes`` is given: CUDA estimates
#: come from the allocator itself; on CPU, process RSS ran 1.3-1.6x above the live-tensor estimate (allocator and
#: oneDNN scratch; benchmarks/README.md), hence the lower fraction.
AUTO_BUDGET_FRACTION = {"cuda": 0.8, "cpu": 0.5}
#: rough estimate = this x the largest leaf-module output (measured peaks: 3x for TAE/EffViT, 6.5x for a causal video
#: decoder).
ROUGH_FACTOR = 8


def is_oom(error: BaseException) -> bool:
    """True for out-of-memory errors: ``torch.OutOfMemoryError`` (CUDA), or a RuntimeError saying "out of memory" or
    (CPU allocator) "can't allocate memory"."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    message = str(error).lower()
    return isinstance(error, oom_type) or (
        isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)
    )


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of tensor storages created inside it and still alive; ``peak`` is the most at once.

    Device-independent (CPU, meta, MPS ...); storages allocated before entering (weights, inputs) are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[Any, int] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.multiprocessing.reductions import StorageWeakRef

        out = func(*args, **(kwargs or {}))
        for ref in [r for r in self.live if r.expired()]:
            self.current -= self.live.pop(ref)
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                ref = StorageWeakRef(tensor.untyped_storage())
                if ref not in self.live:
                    self.live[ref] = tensor.untyped_storage().nbytes()
                    self.current += self.live[ref]
        self.peak = max(self.peak, self.current)
        return out


def rough_peak_bytes(fn: Callable[[], Any], modules: torch.nn.Module) -> tuple[int, Any]:
    """(an upper estimate of the peak bytes of ``fn()``, its result): ``ROUGH_FACTOR`` x the largest output of any leaf
    module of ``modules``, plus the result. Cheap (forward hooks), unlike ``LiveBytes`` whose dispatch mode imports
    torch._dynamo (seconds, once per process)."""
    largest = [0]

    def record(module, args, out):
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    hooks = [m.register_forward_hook(record) for m in modules.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            result = fn()
    finally:
        for hook in hooks:
            hook.remove()
    return ROUGH_FACTOR * largest[0] + result.numel() * result.element_size(), result


def measure_peak_bytes(fn: Callable[[], Any], device: torch.device) -> tuple[int, Any]:
    """(peak bytes allocated while running ``fn()`` above what was allocated before, its result), under no_grad.

    CUDA: the caching allocator's peak; other devices: ``LiveBytes``.
    """
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            result = fn()
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - base, result
        tracker = LiveBytes()
        if "torch._dynamo" in sys.modules:  # something may be compiled: run eagerly, so the tracker sees every op
            fn = torch.compiler.disable(fn)  # (importing dynamo just for this would cost seconds)
        with tracker:
            result = fn()
        return tracker.peak, result


def memory_budget(device: torch.device | str) -> int:
    """Bytes a decode may use now: free CUDA memory plus PyTorch's cached free blocks, or available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))

    return available_memory()


#: per decoder: {(kind, device, dtype): (peak bytes per latent pixel, output elements per latent pixel)}
_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def probe(decoder: torch.nn.Module, job: TileJob, precise: bool = True) -> tuple[float, float]:
    """(peak bytes, output elements) per latent pixel (per latent frame too for causal), measured once and cached.

    ``precise=False`` off CUDA gives ``rough_peak_bytes``' upper estimate instead of ``measure_peak_bytes``.
    """
    x = job.inputs
    precise = precise or x.device.type == "cuda"  # the allocator's peak costs nothing there
    measure = measure_peak_bytes if precise else lambda fn, device: rough_peak_bytes(fn, decoder)
    key = (job.kind, str(x.device), x.dtype, tuple(x.shape[1:-2]) if job.kind != "causal" else x.shape[1], precise)
    cache = _PROBES.setdefault(decoder, {})
    size = PROBE_SIZE
    while key not in cache:
        p = min(size, x.shape[-2]), min(size, x.shape[-1])
        batch = job.batch_unit
        try:
            if job.kind == "causal":
                frames = min(2, x.shape[2])
                probe = x[:1, :, :frames, : p[0], : p[1]].clone()
                peak, out = measure(lambda p=probe, n=frames: job.stream(n).push(p), x.device)
                pixels = frames * p[0] * p[1]
            else:
                probe = x[:batch, ..., : p[0], : p[1]].clone()
                peak, out = measure(lambda p=probe: job.fn(p), x.device)
                pixels = batch * p[0] * p[1] * (x.shape[2] if x.ndim == 5 else 1)
        except (RuntimeError, MemoryError) as error:
            if size == 1 or not (isinstance(error, MemoryError) or is_oom(error)):
                raise
            size //= 2  # even the probe did not fit: a smaller one
            continue
        cache[key] = (peak / pixels, out.numel() / pixels)
    return cache[key]
