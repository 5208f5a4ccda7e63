"""FLOPs of one forward pass (``torch.utils.flop_counter``) and a device's measured peak (matmul TFLOP/s, copy GB/s).

A FLOP here is one multiply or one add (a multiply-accumulate counts 2), as ``FlopCounterMode`` counts them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matmul/conv ops ``fn`` runs (elementwise ops are not counted)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn: Callable[[], object], device: torch.device, runs: int) -> float:
    fn()  # warm up (kernel selection, allocation)
    _sync(device)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def device_peak(device: str | torch.device = "cpu", size: int | None = None, runs: int = 3) -> dict[str, float]:
    """Measured (not datasheet) peaks: square matmul TFLOP/s in bf16 and fp32, and copy bandwidth in GB/s.

    ``size`` defaults to 8192 on CUDA (large enough to saturate tensor cores) and 1024 on CPU (seconds, not minutes).
    """
    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 1024)
    out: dict[str, float] = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        seconds = _best_seconds(lambda a=a, b=b: a @ b, device, runs)
        out[f"matmul_{name}_tflops"] = 2 * n**3 / seconds / 1e12
    numel = (256 if device.type == "cuda" else 32) * 2**20  # 1 GiB / 128 MiB of fp32
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), device, runs)
    out["copy_gbps"] = 2 * src.numel() * src.element_size() / seconds / 1e9  # read + write
    return out
