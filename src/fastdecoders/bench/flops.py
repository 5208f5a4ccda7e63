"""FLOPs of one forward pass (``torch.utils.flop_counter``) and a device's measured peak (matmul TFLOP/s, copy GB/s).

A FLOP here is one multiply or one add (a multiply-accumulate counts 2), as ``FlopCounterMode`` counts them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastdecoders.bench.timing import default_sync


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matmul/conv ops ``fn`` runs (elementwise ops are not counted)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _best_seconds(fn: Callable[[], object], device: torch.device, runs: int) -> float:
    sync = default_sync(device)
    fn()  # warm up (kernel selection, allocation)
    sync()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def device_peak(device: str | torch.device = "cpu", size: int | None = None, runs: int = 3) -> dict[str, float]:
    """Measured (not datasheet) peaks: square matmul TFLOP/s and copy bandwidth in GB/s (read + write).

    CUDA: bf16 and fp32 matmuls of 8192² (large enough to saturate tensor cores), a 1 GiB copy. CPU: an fp32 matmul
    of 1024² and a 128 MiB copy (seconds, not minutes). ``size`` overrides the matmul side.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = size or (8192 if cuda else 1024)
    out: dict[str, float] = {"matmul_n": float(n)}
    for name, dtype in ((("bf16", torch.bfloat16),) if cuda else ()) + (("fp32", torch.float32),):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        seconds = _best_seconds(lambda a=a, b=b: a @ b, device, runs)
        out[f"matmul_{name}_tflops"] = 2 * n**3 / seconds / 1e12
    numel = (256 if cuda else 32) * 2**20 if size is None else max(n * n, 2**16)  # 1 GiB / 128 MiB of fp32
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), device, runs)
    out["copy_gbps"] = 2 * src.numel() * src.element_size() / seconds / 1e9  # read + write
    return out


def peak_tflops(peaks: dict[str, float], dtype_name: str) -> float | None:
    """The measured matmul peak that bounds a run in ``dtype_name`` (fp16/bf16 -> the bf16 peak where measured)."""
    if dtype_name in ("fp16", "bf16") and "matmul_bf16_tflops" in peaks:
        return peaks["matmul_bf16_tflops"]
    return peaks.get("matmul_fp32_tflops")
