"""The speed grid: decoders × shapes × dtype × backend, each decoder's teacher (the original VAE) in the same run.

Every row has the keys of ``ROW_KEYS`` (plus extras: spread, runs, memory ratio, fraction of the device peak).
``shape`` is the decoded pixel shape (B×3×H×W; video and frame-wise decodes of a clip B×3×T×H×W); ``gflops`` is
per forward pass; ``tflops`` is achieved throughput (GFLOP / ms); ``speedup_vs_teacher`` is the teacher's median
latency over this row's at the same shape, dtype and backend, and ``mem_ratio_vs_teacher`` the same for peak memory.
Cells that cannot run here (CUDA graphs on a CPU, a backend that fails to build) are listed as skipped, with why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastdecoders.bench.flops import count_flops, device_peak, peak_tflops
from fastdecoders.bench.plot import plot_latency
from fastdecoders.bench.timing import CpuPeak, Timing, default_sync, time_cuda_events, time_fn
from fastdecoders.errors import FastDecodersError
from fastdecoders.fast import optimize
from fastdecoders.latents import get_latent_space
from fastdecoders.models import build_decoder
from fastdecoders.models.diffusers_vae import teacher_for
from fastdecoders.progress import progress as show_progress
from fastdecoders.registry import get_spec, is_registered, unknown_name_message
from fastdecoders.weights import load_decoder

ROW_KEYS = ("decoder", "shape", "dtype", "backend", "ms_median", "ms_min", "peak_mem_mb", "gflops", "tflops",
            "speedup_vs_teacher", "teacher")  # fmt: skip
BACKENDS = ("eager", "channels_last", "compile", "cuda-graphs", "onnxruntime", "openvino", "auto")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
#: the issue's grid: images (side) and videos (pixel frames × H × W).
GPU_SIZES = ("512", "1024", "2048", "14x576x1024", "81x480x832", "121x512x768")
CPU_SIZES = ("256", "512", "9x256x256")


@dataclass(frozen=True)
class Size:
    """An output size: ``frames`` pixel frames (None: an image, or the default clip) of ``height``×``width``."""

    height: int
    width: int
    frames: int | None = None

    def __str__(self) -> str:
        hw = f"{self.height}x{self.width}" if self.height != self.width else str(self.height)
        return f"{self.frames}x{self.height}x{self.width}" if self.frames else hw


def parse_size(text: str) -> Size:
    """``"512"`` -> 512², ``"480x832"`` -> H×W, ``"81x480x832"`` -> T×H×W (pixel frames)."""
    parts = text.strip().lower().split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise FastDecodersError(f"--sizes: expected N, HxW or TxHxW integers, got {text!r}") from None
    if len(numbers) not in (1, 2, 3) or any(n <= 0 for n in numbers):
        raise FastDecodersError(f"--sizes: expected N, HxW or TxHxW of positive integers, got {text!r}")
    if len(numbers) == 1:
        return Size(numbers[0], numbers[0])
    if len(numbers) == 2:
        return Size(numbers[0], numbers[1])
    return Size(numbers[1], numbers[2], numbers[0])


def parse_dtype(name: str) -> str:
    """fp32/fp16/bf16 (or float32/float16/bfloat16) -> the short name."""
    short = DTYPE_ALIASES.get(name.strip().lower(), name.strip().lower())
    if short not in DTYPES:
        raise FastDecodersError(f"--dtype: expected some of fp32, fp16, bf16, got {name!r}")
    return short


@dataclass
class Grid:
    decoders: list[str]
    sizes: list[Size]
    batch: int = 1
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    backends: list[str] = field(default_factory=lambda: ["eager"])
    device: str = "cpu"
    runs: int = 10
    warmup: int = 3
    teacher: bool = True
    #: latent frames of video decoders for a size without T (pixel frames follow the latent space's arithmetic).
    frames: int = 3
    #: random-init tiny test configs instead of the full ones (smoke tests only; latencies mean nothing).
    tiny: bool = False
    #: image sizes to image decoders only, clip sizes (TxHxW) to clip decoders only (the default grid mixes both).
    split_sizes: bool = False


def check_device(device: str) -> torch.device:
    """``device`` as a torch device that exists here (one line otherwise)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise FastDecodersError(f"--device: expected e.g. cpu or cuda, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FastDecodersError(f"--device: expected a device this machine has (cpu), got {device!r}: no CUDA GPU "
                                f"visible to torch {torch.__version__}")  # fmt: skip
    if dev.type not in ("cpu", "cuda"):
        raise FastDecodersError(f"--device: expected cpu or cuda, got {device!r}")
    return dev


def check_backends(backends: list[str]) -> None:
    for backend in backends:
        if backend not in BACKENDS:
            raise FastDecodersError(f"--backend: expected some of {', '.join(BACKENDS)}, got {backend!r}")


def skip_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` does not apply on ``device`` (None: it does)."""
    if backend == "cuda-graphs" and device.type != "cuda":
        return f"cuda-graphs needs a CUDA device, this run is on {device.type}"
    return None


def load_for_bench(name: str, device: torch.device, dtype: torch.dtype, tiny: bool = False) -> nn.Module:
    """A registry name (random init: timing does not depend on weight values) or a saved decoder path, in eval mode."""
    if is_registered(name) and not get_spec(name).composite:
        decoder = build_decoder(name, tiny=tiny)
    elif Path(name).exists() or is_registered(name):  # a file, or a registered switch (its gate has to route)

        decoder = load_decoder(name)
    else:
        raise FastDecodersError(unknown_name_message(name))
    if not hasattr(decoder, "registry_name") or decoder.registry_name is None:
        decoder.registry_name = name
    return decoder.to(device=device, dtype=dtype).eval()


def _describe(name: str, tiny: bool) -> nn.Module:
    """The decoder ``name`` without real storage where possible (meta tensors: its latent space and layout only)."""
    if is_registered(name) and not get_spec(name).composite:
        with torch.device("meta"):
            return build_decoder(name, tiny=tiny)
    return load_for_bench(name, torch.device("cpu"), torch.float32, tiny)


def make_inputs(decoder: nn.Module, size: Size, batch: int, frames: int, device, dtype) -> tuple[tuple, dict, str]:
    """Random diffusion-space latents decoding to ``size``: (args, kwargs, output shape as 'Bx3xHxW'/'Bx3xTxHxW').

    Video decoders (NCTHW) decode one clip per batch item; SVD-style temporal decoders get (B·T, C, h, w) +
    ``num_frames``; image decoders given a clip size decode its B·T frames as one batch (frame-wise, as pipelines do).
    """
    space = get_latent_space(decoder.latent_space_name)
    f = space.spatial_factor
    name = getattr(decoder, "registry_name", None) or "decoder"
    if size.height % f or size.width % f:
        raise FastDecodersError(f"--sizes: {name} ({space.name} latents) expected height and width that are positive "
                                f"multiples of {f} pixels, got {size}")  # fmt: skip
    h, w = size.height // f, size.width // f
    if decoder.latent_ndim == 5:
        pixel = size.frames if size.frames else space.pixel_frames(frames)
        try:
            t = space.latent_frames(pixel)
        except FastDecodersError as e:
            raise FastDecodersError(f"--sizes {size}: {name}: {e}") from None
        z = torch.randn(batch, space.channels, t, h, w, device=device, dtype=dtype)
        return (z,), {}, f"{batch}x3x{pixel}x{size.height}x{size.width}"
    if decoder.decodes_clips and space.layout == "NTCHW":  # forward takes frames + num_frames (the protocol)
        pixel = size.frames or frames
        z = torch.randn(batch * pixel, space.channels, h, w, device=device, dtype=dtype)  # SVD: (B·T, C, h, w)
        return (z,), {"num_frames": pixel}, f"{batch}x3x{pixel}x{size.height}x{size.width}"
    if size.frames:
        z = torch.randn(batch * size.frames, space.channels, h, w, device=device, dtype=dtype)
        return (z,), {}, f"{batch}x3x{size.frames}x{size.height}x{size.width}"
    z = torch.randn(batch, space.channels, h, w, device=device, dtype=dtype)
    return (z,), {}, f"{batch}x3x{size.height}x{size.width}"


def prepare(decoder: nn.Module, args: tuple, kwargs: dict, backend: str) -> Callable[[], torch.Tensor]:
    """A no-argument callable running one decode with ``backend`` (``decoder`` may be changed in place)."""
    if backend == "channels_last":
        fmt = torch.channels_last_3d if args[0].ndim == 5 else torch.channels_last
        decoder = decoder.to(memory_format=fmt)
        args = (args[0].contiguous(memory_format=fmt),)
    if backend == "compile":
        decoder = torch.compile(decoder)
    if backend == "cuda-graphs":
        return _cuda_graph(decoder, args, kwargs)
    if backend in ("onnxruntime", "openvino", "auto"):  # the export (cached) and auto's measurement: untimed

        decoder = optimize(decoder, backend=backend, shape=tuple(args[0].shape), num_frames=kwargs.get("num_frames"))

    def step() -> torch.Tensor:
        with torch.inference_mode():
            return decoder(*args, **kwargs)

    step.chosen = getattr(decoder, "fastdecoders_backend", backend)  # what auto picked
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
    space = get_latent_space(decoder.latent_space_name)
    probe = Size(2 * space.spatial_factor, 2 * space.spatial_factor)  # 2×2 latents, 2 latent frames: norms need > 1
    args, kwargs, _ = make_inputs(decoder, probe, 1, 2, device, next(decoder.parameters()).dtype)
    try:
        with torch.inference_mode():
            decoder(*args, **kwargs)
    except (RuntimeError, NotImplementedError) as e:  # torch's missing-kernel errors ("not implemented for 'Half'")
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FastDecodersError(
            f"--dtype: expected a dtype {name} runs in on {device}, got {dtype_name} ({first})"
        ) from None


def teachers_for(decoders: list[nn.Module]) -> dict[str, str]:
    """Latent space -> registered teacher name, for the spaces of ``decoders``."""
    spaces = {d.latent_space_name for d in decoders}
    return {s: t for s in sorted(spaces) if (t := teacher_for(s)) is not None}


def measure(
    step: Callable[[], object], device: torch.device, warmup: int, runs: int, static_mb: float
) -> tuple[Timing, float]:
    """(timing, peak memory in MiB) of ``step``.

    CUDA: CUDA events around each timed call; peak = ``torch.cuda.max_memory_allocated`` over the timed runs (weights,
    inputs and activations). CPU: ``time.perf_counter``; peak = ``static_mb`` (weights + inputs, already resident) +
    the process's RSS growth during one decode after warm-up, with the heap trimmed first.
    """
    if device.type == "cuda":
        for _ in range(warmup):
            step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        timing = time_cuda_events(step, 0, runs)
        return timing, torch.cuda.max_memory_allocated(device) / 2**20
    for _ in range(warmup):
        step()
    tracker = CpuPeak()
    tracker.start()
    step()
    peak = static_mb + tracker.growth() / 2**20
    return time_fn(step, 0, runs, sync=default_sync(device)), peak


def _tensor_mb(decoder: nn.Module, args: tuple) -> float:
    tensors = list(decoder.parameters()) + list(decoder.buffers()) + [a for a in args if torch.is_tensor(a)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def is_clip_decoder(decoder: nn.Module) -> bool:
    """Whether ``decoder`` decodes clips (NCTHW video, or frames + ``num_frames`` like SVD's) rather than images."""
    return decoder.decodes_clips


def _sizes_per_decoder(decoders: dict[str, nn.Module], grid: Grid) -> tuple[dict[str, list[Size]], list[dict]]:
    """The sizes each decoder runs at, and the (decoder, size) cells skipped because the frame count does not fit its
    latent frame arithmetic (Wan: 1 + 4k). Sizes whose height/width do not fit raise: that is a typo, not a grid.
    With ``grid.split_sizes`` (the default grid), image sizes go to image decoders and clip sizes to clip decoders."""
    sizes_of: dict[str, list[Size]] = {}
    skipped: list[dict] = []
    for name, decoder in decoders.items():
        sizes_of[name] = []
        reasons = []
        for size in grid.sizes:
            if grid.split_sizes and (size.frames is not None) != is_clip_decoder(decoder):
                continue
            space = get_latent_space(decoder.latent_space_name)
            if size.height % space.spatial_factor or size.width % space.spatial_factor:
                make_inputs(decoder, size, grid.batch, grid.frames, "meta", torch.float32)  # raises the clear error
            try:
                make_inputs(decoder, size, grid.batch, grid.frames, "meta", torch.float32)
            except FastDecodersError as e:
                reasons.append(str(e))
                skipped += [{"decoder": name, "shape": str(size), "dtype": parse_dtype(d), "backend": b,
                             "reason": str(e)} for d in grid.dtypes for b in grid.backends]  # fmt: skip
                continue
            sizes_of[name].append(size)
        if reasons and not sizes_of[name]:
            raise FastDecodersError(reasons[0])
    return sizes_of, skipped


def run_grid(grid: Grid, progress: bool = True, peaks: dict[str, float] | None = None) -> tuple[list[dict], list[dict]]:
    """Measure every grid cell: (rows, skipped cells with a reason). Teachers are added unless ``grid.teacher`` is
    False. ``peaks`` (from ``flops.device_peak``) adds each row's fraction of the measured matmul peak."""
    device = check_device(grid.device)
    check_backends(grid.backends)
    dtypes = [parse_dtype(d) for d in grid.dtypes]
    if not grid.decoders:
        raise FastDecodersError("expected decoders to bench (registered names or saved decoder paths), got none")
    if not grid.sizes:
        raise FastDecodersError("--sizes: expected at least one size, e.g. 256,512, got none")
    first = {n: _describe(n, grid.tiny) for n in grid.decoders}
    teachers = teachers_for(list(first.values())) if grid.teacher else {}
    names = list(grid.decoders) + [t for t in teachers.values() if t not in grid.decoders]
    described = {**first, **{n: _describe(n, grid.tiny) for n in names if n not in first}}
    spaces = {n: d.latent_space_name for n, d in described.items()}
    sizes_of, skipped = _sizes_per_decoder(described, grid)
    del first, described
    cells = [(n, s, d, b) for d in dtypes for b in grid.backends for n in names for s in sizes_of[n]]
    rows: list[dict] = []
    flops_cache: dict[tuple[str, str], int] = {}
    loaded: dict[tuple[str, str], nn.Module] = {}
    bar = show_progress(cells, desc="bench", unit="cell", enabled=progress)
    for name, size, dtype_name, backend in bar:
        bar.set_postfix_str(f"{name} {size} {dtype_name} {backend}")
        cell = {"decoder": name, "shape": str(size), "dtype": dtype_name, "backend": backend}
        reason = skip_reason(backend, device)
        if reason:
            skipped.append({**cell, "reason": reason})
            continue
        key = (name, dtype_name)
        if key not in loaded:
            # one decoder resident at a time: the peak memory of a cell must not include the previous decoder
            loaded.clear()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            loaded[key] = load_for_bench(name, device, DTYPES[dtype_name], grid.tiny)
            _probe(loaded[key], dtype_name, device, name)
        decoder = loaded[key]
        spaces.setdefault(name, decoder.latent_space_name)
        args, kwargs, shape = make_inputs(decoder, size, grid.batch, grid.frames, device, DTYPES[dtype_name])
        cell["shape"] = shape
        try:
            if (name, shape) not in flops_cache:  # FLOPs depend on the shape only, not on dtype or backend
                flops_cache[(name, shape)] = count_flops(lambda d=decoder, a=args, k=kwargs: d(*a, **k))
            step = prepare(decoder, args, kwargs, backend)
            if backend == "auto":
                cell["backend"] = f"auto:{step.chosen}"  # the default path, and what it ran
            timing, peak_mb = measure(step, device, grid.warmup, grid.runs, _tensor_mb(decoder, args))
        except torch.OutOfMemoryError:
            skipped.append({**cell, "reason": "out of memory"})
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        except Exception as e:  # a backend that cannot build here (no compiler, unsupported op): skip, say why
            if backend == "eager":
                raise
            skipped.append({**cell, "reason": _first_line(e)})
            loaded.pop(key, None)
            continue
        finally:
            if backend != "eager":
                loaded.pop(key, None)  # compiled / channels_last / captured modules must not leak into the next cell
        gflops = flops_cache[(name, shape)] / 1e9
        tflops = gflops / timing.ms_median  # GFLOP per ms = TFLOP per s
        peak = peak_tflops(peaks, dtype_name) if peaks else None
        rows.append({
            **cell, "ms_median": timing.ms_median, "ms_min": timing.ms_min, "peak_mem_mb": peak_mb, "gflops": gflops,
            "tflops": tflops, "speedup_vs_teacher": None, "teacher": teachers.get(spaces[name]),
            "ms_spread": timing.ms_spread, "runs": timing.runs, "mem_ratio_vs_teacher": None,
            "peak_fraction": tflops / peak if peak else None,
        })  # fmt: skip
    fill_speedups(rows)
    return rows, skipped


def fill_speedups(rows: list[dict]) -> None:
    """Set ``speedup_vs_teacher`` (teacher ms / row ms) and ``mem_ratio_vs_teacher`` (teacher MiB / row MiB) from the
    teacher's row at the same shape, dtype and backend; None where the teacher has no such row."""
    by_cell = {(r["decoder"], r["shape"], r["dtype"], r["backend"]): r for r in rows}
    for row in rows:
        teacher = row["teacher"]
        ref = by_cell.get((teacher, row["shape"], row["dtype"], row["backend"])) if teacher else None
        row["speedup_vs_teacher"] = ref["ms_median"] / row["ms_median"] if ref and row["ms_median"] > 0 else None
        ok = ref and row["peak_mem_mb"] and ref["peak_mem_mb"]
        row["mem_ratio_vs_teacher"] = ref["peak_mem_mb"] / row["peak_mem_mb"] if ok else None


def device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (torch {torch.__version__})"
    import os
    import platform

    threads = torch.get_num_threads()
    cpu = platform.processor() or platform.machine()
    return f"cpu {cpu} x{os.cpu_count()}, {threads} torch threads (torch {torch.__version__})"


def bench_grid(grid: Grid, measure_peak: bool = True, plot: str | None = None) -> dict[str, Any]:
    """``fastdecoders bench``'s result: every grid cell measured (``run_grid``), the device's measured matmul/copy
    peaks (``measure_peak``), how it was measured, and the latency plot written to ``plot``."""
    peaks = device_peak(grid.device, size=256 if grid.tiny else None) if measure_peak else None
    rows, skipped = run_grid(grid, peaks=peaks)
    result: dict[str, Any] = {"device": device_name(grid.device), "rows": rows, "skipped": skipped}
    result["device_peak"] = peaks
    result["method"] = (
        f"{grid.warmup} warm-up + {grid.runs} timed runs per cell; "
        + ("CUDA events, peak = torch.cuda.max_memory_allocated" if grid.device.startswith("cuda") else
           "perf_counter, peak = weights + inputs + process RSS growth in one decode")
        + "; FLOPs: torch.utils.flop_counter (matmul/conv)"
    )  # fmt: skip
    if grid.tiny:
        result["note"] = "--tiny: few-thousand-weight test configs; the numbers say nothing about the real decoders"
    result["plot"] = str(plot_latency(rows, plot, title=result["device"]))
    return result
