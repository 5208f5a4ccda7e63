"""The speed grid: decoders × sizes × dtype × backend, each decoder's teacher (the original VAE) in the same run.

Every row has exactly the keys of ``ROW_KEYS``. ``shape`` is the decoded pixel shape (B×3×H×W, video B×3×T×H×W);
``gflops`` is per forward pass; ``tflops`` is achieved throughput (GFLOP / ms); ``speedup_vs_teacher`` is the
teacher's median latency over this row's at the same shape, dtype and backend.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fastdecoders.bench.flops import count_flops
from fastdecoders.bench.timing import default_sync, peak_memory_mb, reset_peak_memory, time_cuda_events, time_fn
from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import get_latent_space

ROW_KEYS = ("decoder", "shape", "dtype", "backend", "ms_median", "ms_min", "peak_mem_mb", "gflops", "tflops",
            "speedup_vs_teacher", "teacher")  # fmt: skip
BACKENDS = ("eager", "channels_last", "compile", "cuda-graphs")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Grid:
    decoders: list[str]
    sizes: list[int]
    batch: int = 1
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    backends: list[str] = field(default_factory=lambda: ["eager"])
    device: str = "cpu"
    runs: int = 10
    warmup: int = 3
    teacher: bool = True
    #: latent frames for video decoders (pixel frames follow the latent space's arithmetic).
    frames: int = 3
    #: random-init tiny test configs instead of the full ones (smoke tests only; latencies mean nothing).
    tiny: bool = False


def check_device(device: str, backends: list[str]) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise FastDecodersError(f"--device: expected e.g. cpu or cuda, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FastDecodersError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__})")
    for backend in backends:
        if backend not in BACKENDS:
            raise FastDecodersError(f"--backend: expected some of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "cuda-graphs" and dev.type != "cuda":
            raise FastDecodersError(f"--backend cuda-graphs needs a CUDA device, got --device {device}")
    return dev


def load_for_bench(name: str, device: torch.device, dtype: torch.dtype, tiny: bool = False) -> nn.Module:
    """A registry name (random init: timing does not depend on weight values) or a saved decoder path, in eval mode."""
    from fastdecoders.registry import build_decoder, is_registered
    from fastdecoders.weights import load_decoder

    if is_registered(name):
        decoder = build_decoder(name, tiny=tiny)
    elif Path(name).exists():
        decoder = load_decoder(name)
    else:
        from fastdecoders.registry import unknown_name_message

        raise FastDecodersError(unknown_name_message(name))
    return decoder.to(device=device, dtype=dtype).eval()


def make_inputs(decoder: nn.Module, size: int, batch: int, frames: int, device, dtype) -> tuple[tuple, dict, str]:
    """Random diffusion-space latents decoding to ``size``² pixels: (args, kwargs, output shape as 'Bx3xHxW')."""
    space = get_latent_space(decoder.latent_space_name)
    f = space.spatial_factor
    if size <= 0 or size % f:
        raise FastDecodersError(f"--sizes: {decoder.registry_name or 'decoder'} ({space.name}) needs a positive "
                                f"multiple of {f} pixels, got {size}")  # fmt: skip
    h = size // f
    if decoder.latent_ndim == 5:
        z = torch.randn(batch, space.channels, frames, h, h, device=device, dtype=dtype)
        return (z,), {}, f"{batch}x3x{space.pixel_frames(frames)}x{size}x{size}"
    if "num_frames" in inspect.signature(decoder.forward).parameters and space.layout == "NTCHW":
        z = torch.randn(batch * frames, space.channels, h, h, device=device, dtype=dtype)  # SVD: (B·T, C, h, w)
        return (z,), {"num_frames": frames}, f"{batch}x3x{frames}x{size}x{size}"
    z = torch.randn(batch, space.channels, h, h, device=device, dtype=dtype)
    return (z,), {}, f"{batch}x3x{size}x{size}"


def prepare(decoder: nn.Module, args: tuple, kwargs: dict, backend: str) -> Callable[[], torch.Tensor]:
    """A no-argument callable running one decode with ``backend``."""
    if backend == "channels_last":
        fmt = torch.channels_last_3d if args[0].ndim == 5 else torch.channels_last
        decoder = decoder.to(memory_format=fmt)
        args = (args[0].contiguous(memory_format=fmt),)
    if backend == "compile":
        decoder = torch.compile(decoder)
    if backend == "cuda-graphs":
        return _cuda_graph(decoder, args, kwargs)

    def step() -> torch.Tensor:
        with torch.inference_mode():
            return decoder(*args, **kwargs)

    return step


def _cuda_graph(decoder: nn.Module, args: tuple, kwargs: dict) -> Callable[[], torch.Tensor]:
    """Capture one decode into a CUDA graph (static input/output buffers); replay removes all launch overhead."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm up outside the graph: cuDNN autotuning and allocations must not be captured
            decoder(*args, **kwargs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        out = decoder(*args, **kwargs)

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


def _probe(decoder: nn.Module, dtype_name: str, device: torch.device, name: str) -> None:
    """Fail with one line, up front, when the dtype does not run on this device (e.g. an op without fp16 kernel)."""
    args, kwargs, _ = make_inputs(decoder, get_latent_space(decoder.latent_space_name).spatial_factor, 1, 1,
                                  device, next(decoder.parameters()).dtype)  # fmt: skip
    try:
        with torch.inference_mode():
            decoder(*args, **kwargs)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FastDecodersError(f"--dtype {dtype_name} does not run {name} on {device}: {first}") from None


def teachers_for(decoders: list[nn.Module]) -> dict[str, str]:
    """Latent space -> registered teacher name, for the spaces of ``decoders``."""
    from fastdecoders.models.teachers import teacher_for

    spaces = {d.latent_space_name for d in decoders}
    return {s: t for s in sorted(spaces) if (t := teacher_for(s)) is not None}


def run_grid(grid: Grid, progress: bool = True) -> list[dict]:
    """Measure every grid cell; returns the rows (teachers included, unless ``grid.teacher`` is False)."""
    from tqdm import tqdm

    device = check_device(grid.device, grid.backends)
    for name in grid.dtypes:
        if name not in DTYPES:
            raise FastDecodersError(f"--dtype: expected some of {', '.join(DTYPES)}, got {name!r}")
    if not grid.decoders:
        raise FastDecodersError("no decoders given; name registered decoders or saved decoder paths")
    first = {n: load_for_bench(n, device, torch.float32, grid.tiny) for n in grid.decoders}
    for decoder in first.values():  # sizes first: cheap, and a clear error before any long run
        for size in grid.sizes:
            make_inputs(decoder, size, grid.batch, grid.frames, "meta", torch.float32)
    names = list(grid.decoders)
    teachers = teachers_for(list(first.values())) if grid.teacher else {}
    names += [t for t in teachers.values() if t not in names]
    cells = [(n, s, d, b) for d in grid.dtypes for b in grid.backends for n in names for s in grid.sizes]
    rows: list[dict] = []
    flops_cache: dict[tuple[str, str], int] = {}
    sync = default_sync(device)
    bar = tqdm(cells, desc="bench", unit="cell", file=sys.stderr, disable=not progress)
    loaded: dict[tuple[str, str], nn.Module] = {}
    for name, size, dtype_name, backend in bar:
        bar.set_postfix_str(f"{name} {size}px {dtype_name} {backend}")
        key = (name, dtype_name)
        if key not in loaded:
            loaded[key] = load_for_bench(name, device, DTYPES[dtype_name], grid.tiny)
            _probe(loaded[key], dtype_name, device, name)
        decoder = loaded[key]
        args, kwargs, shape = make_inputs(decoder, size, grid.batch, grid.frames, device, DTYPES[dtype_name])
        if (name, shape) not in flops_cache:  # FLOPs depend on the shape only, not on dtype or backend
            flops_cache[(name, shape)] = count_flops(lambda d=decoder, a=args, k=kwargs: d(*a, **k))
        step = prepare(decoder, args, kwargs, backend)
        reset_peak_memory(device)
        if device.type == "cuda":
            timing = time_cuda_events(step, grid.warmup, grid.runs)
        else:
            timing = time_fn(step, grid.warmup, grid.runs, sync=sync)
        gflops = flops_cache[(name, shape)] / 1e9
        space = decoder.latent_space_name
        rows.append({
            "decoder": name, "shape": shape, "dtype": dtype_name, "backend": backend,
            "ms_median": timing.ms_median, "ms_min": timing.ms_min, "peak_mem_mb": peak_memory_mb(device),
            "gflops": gflops, "tflops": gflops / timing.ms_median, "speedup_vs_teacher": None,
            "teacher": teachers.get(space),
        })  # fmt: skip
        if backend != "eager":
            loaded.pop(key)  # compiled / channels_last / captured modules must not leak into the next backend
    _fill_speedups(rows)
    return rows


def _fill_speedups(rows: list[dict]) -> None:
    by_cell = {(r["decoder"], r["shape"], r["dtype"], r["backend"]): r["ms_median"] for r in rows}
    for row in rows:
        teacher = row["teacher"]
        ms = by_cell.get((teacher, row["shape"], row["dtype"], row["backend"])) if teacher else None
        row["speedup_vs_teacher"] = ms / row["ms_median"] if ms else None


def device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (torch {torch.__version__})"
    import os
    import platform

    return f"cpu {platform.processor() or platform.machine()} x{os.cpu_count()} (torch {torch.__version__})"
