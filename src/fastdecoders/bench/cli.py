"""``fastdecoders bench``: latency, peak memory and FLOPs of decoders vs their teacher VAE on this device.

Example: ``fastdecoders bench taesdxl tae192-sdxl --sizes 512,1024 --dtype float16 --backend eager,compile
--device cuda --plot latency.png``
"""

from __future__ import annotations

import argparse
from typing import Any

from fastdecoders.errors import FastDecodersError


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("decoders", nargs="+", help="registered decoder names or saved decoder paths")
    parser.add_argument("--sizes", type=_ints, default=[512], help="output side lengths in pixels, e.g. 256,512")
    parser.add_argument("--batch", type=int, default=1, help="batch size")
    parser.add_argument("--frames", type=int, default=3, help="latent frames for video decoders")
    parser.add_argument("--dtype", type=_names, default=["float32"], help="float32, float16, bfloat16 (comma list)")
    parser.add_argument("--backend", type=_names, default=["eager"],
                        help="eager, channels_last, compile, cuda-graphs (comma list)")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per cell (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    parser.add_argument("--plot", default=None, help="write a latency-vs-resolution PNG here")
    parser.add_argument("--no-teacher", action="store_true", help="skip the original VAE of each latent family")
    parser.add_argument("--tiny", action="store_true", help="tiny random test configs (smoke tests only)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from fastdecoders.bench.speed import Grid, device_name, run_grid

    if args.batch < 1 or args.runs < 1 or args.warmup < 0 or args.frames < 1:
        raise FastDecodersError(
            f"expected --batch >= 1, --runs >= 1, --warmup >= 0, --frames >= 1; "
            f"got {args.batch}, {args.runs}, {args.warmup}, {args.frames}"
        )
    if not args.sizes:
        raise FastDecodersError("--sizes: expected at least one size, e.g. 256,512")
    grid = Grid(
        decoders=list(args.decoders), sizes=args.sizes, batch=args.batch, dtypes=args.dtype, backends=args.backend,
        device=args.device, runs=args.runs, warmup=args.warmup, teacher=not args.no_teacher, frames=args.frames,
        tiny=args.tiny,
    )  # fmt: skip
    rows = run_grid(grid)
    result: dict[str, Any] = {"device": device_name(args.device), "rows": rows}
    if args.plot:
        from fastdecoders.bench.plot import plot_latency

        plot_latency(rows, args.plot, title=result["device"])
    return result


def render(result: dict[str, Any]) -> str:
    from fastdecoders.commands import format_table

    headers = ["decoder", "shape", "dtype", "backend", "ms_median", "ms_min", "peak_mem_mb", "gflops", "tflops",
               "speedup_vs_teacher"]  # fmt: skip
    rows = [[r[h] for h in headers] for r in result["rows"]]
    return f"device: {result['device']}\n" + format_table(headers, rows)
