"""``fastdecoders bench``: latency, peak memory and FLOPs of decoders vs their teacher VAE on this device.

Two modes:

* grid: ``fastdecoders bench taesdxl tae192-sdxl --sizes 512,1024 --dtype fp16 --backend eager,compile``: every
  decoder × size × dtype × backend, each latent family's original VAE measured in the same run, a table (or
  ``--json``) and always a latency-vs-resolution PNG (``--plot``, default ``bench.png``).
* pipeline: ``fastdecoders bench --pipeline sdxl --steps 1,4,30 --decoder taesdxl``: a whole random-weight diffusers
  pipeline with its own decoder and with ours; the decoder's share of the total and the end-to-end speed-up.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fastdecoders.bench.pipeline import run_pipeline
from fastdecoders.bench.plot import plot_pipeline
from fastdecoders.bench.speed import CPU_SIZES, GPU_SIZES, Grid, bench_grid, check_device, parse_dtype, parse_size
from fastdecoders.commands import format_table
from fastdecoders.errors import FastDecodersError


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("decoders", nargs="*", help="registered decoder names or saved decoder paths (grid mode)")
    parser.add_argument("--sizes", type=_names, default=None,
                        help="output sizes: N (N×N), HxW or TxHxW pixel frames; default 512,1024,2048 and "
                             "14x576x1024,81x480x832,121x512x768 on CUDA, 256,512,9x256x256 on CPU, image sizes to "
                             "image decoders and TxHxW to video decoders")  # fmt: skip
    parser.add_argument("--batch", type=int, default=1, help="batch size")
    parser.add_argument("--frames", type=int, default=3, help="latent frames of video decoders for sizes without T")
    parser.add_argument("--dtype", type=_names, default=None, help="fp32, fp16, bf16 (comma list; float32, float16, "
                        "bfloat16 are accepted too); default: fp16 on CUDA, fp32 on CPU")  # fmt: skip
    parser.add_argument("--backend", type=_names, default=["eager"],
                        help="eager, channels_last, compile, cuda-graphs, onnxruntime, openvino, auto (the fastest "
                             "measured, cached; the decode/roundtrip default) as a comma list; those that do not "
                             "apply here are skipped with the reason")  # fmt: skip
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (auto: cuda when there is one)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per cell (median, min and spread reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    parser.add_argument("--plot", "-o", default="bench.png", help="where to write the PNG plot")
    parser.add_argument("--no-teacher", action="store_true", help="skip the original VAE of each latent family")
    parser.add_argument("--no-peak", action="store_true", help="skip measuring the device's matmul/copy peak")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny random test configs (smoke tests; numbers mean nothing)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    pipe = parser.add_argument_group("pipeline mode (end to end)")
    pipe.add_argument("--pipeline", default=None, help="sdxl, svd or wan2.1: time the whole pipeline instead")
    pipe.add_argument("--steps", type=_ints, default=[1, 4, 30], help="denoising step counts")
    pipe.add_argument("--decoder", default=None, help="our decoder in the pipeline (default: the family's TAE)")
    pipe.add_argument("--full", action="store_true",
                      help="run the pipeline at every step count (default: compose from 2-step runs)")  # fmt: skip


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch


    if args.batch < 1 or args.runs < 1 or args.warmup < 0 or args.frames < 1:
        raise FastDecodersError(
            f"expected --batch >= 1, --runs >= 1, --warmup >= 0, --frames >= 1; "
            f"got {args.batch}, {args.runs}, {args.warmup}, {args.frames}"
        )
    if args.threads is not None:
        if args.threads < 1:
            raise FastDecodersError(f"--threads: expected >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    dev = check_device(device)
    dtypes = [parse_dtype(d) for d in (args.dtype or (["fp16"] if dev.type == "cuda" else ["fp32"]))]
    if args.pipeline is not None:
        return _run_pipeline(args, device, dtypes)
    if not args.decoders:
        raise FastDecodersError("expected decoder names or paths (or --pipeline sdxl|svd|wan2.1), got none")
    if args.sizes is not None and not args.sizes:
        raise FastDecodersError("--sizes: expected at least one size, e.g. 256,512, got none")
    sizes = [parse_size(s) for s in (args.sizes or (GPU_SIZES if dev.type == "cuda" else CPU_SIZES))]
    grid = Grid(
        decoders=list(args.decoders), sizes=sizes, batch=args.batch, dtypes=dtypes, backends=args.backend,
        device=device, runs=args.runs, warmup=args.warmup, teacher=not args.no_teacher, frames=args.frames,
        tiny=args.tiny, split_sizes=args.sizes is None,
    )  # fmt: skip
    result = bench_grid(grid, measure_peak=not args.no_peak, plot=args.plot)
    print(f"plot: {result['plot']}", file=sys.stderr)
    return result


def _run_pipeline(args: argparse.Namespace, device: str, dtypes: list[str]) -> dict[str, Any]:
    if len(dtypes) != 1:
        raise FastDecodersError(f"--dtype: pipeline mode expected one dtype, got {','.join(dtypes)}")
    if args.sizes is not None and len(args.sizes) != 1:
        raise FastDecodersError(f"--sizes: pipeline mode expected one size, got {','.join(args.sizes)}")
    decoder = args.decoder or (args.decoders[0] if len(args.decoders) == 1 else None)
    if args.decoder is None and len(args.decoders) > 1:
        raise FastDecodersError(f"pipeline mode expected one decoder, got {', '.join(args.decoders)}")
    size = parse_size(args.sizes[0]) if args.sizes else None
    result = run_pipeline(
        args.pipeline, decoder, args.steps, device=device, dtype=dtypes[0], size=size, runs=args.runs,
        warmup=min(args.warmup, 1), tiny=args.tiny, full=args.full,
    )  # fmt: skip
    result["plot"] = str(plot_pipeline(result, args.plot))
    print(f"plot: {result['plot']}", file=sys.stderr)
    return result


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def render(result: dict[str, Any]) -> str:
    if result.get("mode") == "pipeline":
        headers = ["steps", "decoder", "ms_step", "ms_total_teacher", "ms_total", "ms_decode_teacher", "ms_decode",
                   "decoder_share_teacher", "speedup_e2e"]  # fmt: skip
        rows = [[_fmt(r[h]) for h in headers] for r in result["rows"]]
        head = f"device: {result['device']}\npipeline: {result['pipeline']} ({result['rows'][0]['shape']}, " \
               f"{result['rows'][0]['dtype']}, teacher {result['rows'][0]['teacher']})\nmethod: {result['method']}\n"
        return head + format_table(headers, rows)
    headers = ["decoder", "shape", "dtype", "backend", "ms_median", "ms_min", "peak_mem_mb", "gflops", "tflops",
               "speedup_vs_teacher", "mem_ratio_vs_teacher", "peak_fraction"]  # fmt: skip
    rows = [[_fmt(r[h]) for h in headers] for r in result["rows"]]
    lines = [f"device: {result['device']}"]
    if result.get("device_peak"):
        lines.append("measured peak: " + ", ".join(f"{k} {_fmt(v)}" for k, v in result["device_peak"].items()))
    lines.append(format_table(headers, rows))
    lines += [f"skipped {s['decoder']} {s['shape']} {s['dtype']} {s['backend']}: {s['reason']}"
              for s in result.get("skipped", [])]  # fmt: skip
    if result.get("note"):
        lines.append(result["note"])
    return "\n".join(lines)
