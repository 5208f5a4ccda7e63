"""``fastdecoders export DECODER -o decoder.onnx [--dynamic-shape] [--fp16] [--opset N]``: one verified ONNX file.

The export is checked before it is written (``fastdecoders.export.verify``): onnx.checker, then ONNX Runtime against
PyTorch on random and real latents. When a check fails the command prints the table, writes nothing and exits 1.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fastdecoders.commands import add_weights_dir, format_table
from fastdecoders.errors import FastDecodersError
from fastdecoders.export.onnx import check_arch, export_model, graph_kind
from fastdecoders.export.runtime import save_model
from fastdecoders.export.spec import require
from fastdecoders.export.verify import verify
from fastdecoders.io import read_latents
from fastdecoders.latents import get_latent_space
from fastdecoders.registry import get_spec, is_registered
from fastdecoders.weights import load_decoder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("decoder", help="registry name, weights file/folder, or hub id (tae, effvit, tae-temporal "
                        "or taehv architectures)")  # fmt: skip
    parser.add_argument("-o", "--out", required=True, help="output .onnx file (weights inside)")
    parser.add_argument("--dynamic-shape", action="store_true", help="batch 1..64 and latent sides 2..512 (frames "
                        "1..256 for video); default: exactly --batch x --size")  # fmt: skip
    parser.add_argument("--fp16", action="store_true", help="float16 weights and activations (reported against "
                        "float32 PyTorch, not held to the 1e-4 bound)")  # fmt: skip
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 18+)")
    parser.add_argument("--size", default=None, help="example output size in pixels, N or HxW (default 512 for "
                        "images, 256 for video); a static export takes exactly this")  # fmt: skip
    parser.add_argument("--batch", type=int, default=1, help="example batch size")
    parser.add_argument("--frames", type=int, default=None, help="latent frames per call: a clip's frames "
                        "(tae-temporal, default 4) or a streaming step's chunk (taehv, default 1)")  # fmt: skip
    parser.add_argument("--latents", default=None, help="real latents file to verify with, and the example size "
                        "unless --size is given (default: a sample photo through the family's TAE encoder, where "
                        "there is one)")  # fmt: skip
    parser.add_argument("--latents-space", dest="space", default=None, help="latent space if the source lacks it")
    add_weights_dir(parser)


def _size(text: str | None, default: int, factor: int) -> tuple[int, int]:
    parts = (text or str(default)).lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise FastDecodersError(f"--size: expected N or HxW pixels, got {text!r}") from None
    if len(parts) > 2 or h <= 0 or w <= 0 or h % factor or w % factor:
        raise FastDecodersError(f"--size: expected N or HxW, positive multiples of {factor} pixels, got {text!r}")
    return h // factor, w // factor


def run(args: argparse.Namespace) -> dict:
    if args.batch < 1 or (args.frames is not None and args.frames < 1):
        raise FastDecodersError(f"expected --batch >= 1 and --frames >= 1, got {args.batch} and {args.frames}")
    if args.opset is not None and not 7 <= args.opset <= 30:
        raise FastDecodersError(f"--opset: expected an ONNX opset between 7 and 30, got {args.opset}")
    if not str(args.out).endswith(".onnx"):
        raise FastDecodersError(f"-o: expected a .onnx file name, got {args.out}")
    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module)  # before loading anything: a missing extra is one line and exit 2

    if is_registered(args.decoder):  # refuse before loading (or failing to find) weights
        check_arch(get_spec(args.decoder).arch, args.decoder)
    decoder = load_decoder(args.decoder, latents=args.space, weights_dir=args.weights_dir)
    kind = graph_kind(decoder)
    space = get_latent_space(decoder.latent_space_name)
    latent_hw = _size(args.size, 512 if kind == "image" else 256, space.spatial_factor)
    frames = args.frames or (4 if kind == "clip" else 1)
    real = read_latents(args.latents) if args.latents else None
    if real is not None and args.size is None:  # the real latents' size is the example size
        latent_hw = (int(real.shape[-2]), int(real.shape[-1]))
    model, meta = export_model(decoder, latent_hw, args.batch, frames, args.dynamic_shape, args.fp16, args.opset)
    report = verify(decoder, model, meta, latents=real, weights_dir=args.weights_dir)
    result = {"decoder": args.decoder, "kind": kind, "dtype": meta["dtype"], "opset": meta["opset"],
              "dynamic": args.dynamic_shape, "input_range": meta["inputs"]["latents"], **report}  # fmt: skip
    if not report["ok"]:
        result.update(out=None, exit_code=1)  # cli.main exits with it; nothing was written
        if Path(args.out).exists():
            os.unlink(args.out)  # an older file under that name must not pass for this failed export
        return result
    path = save_model(model, args.out)
    result.update(out=str(path), mb=round(path.stat().st_size / 2**20, 2))
    return result


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.2e}"
    return str(value)


def render(result: dict) -> str:
    r = result["input_range"]
    shape = "x".join(map(str, r["min"])) if r["min"] == r["max"] else f"{r['min']} .. {r['max']}"
    rows = [[c["check"], c.get("latents"), c.get("shape"), c.get("max_abs_diff"), c.get("tolerance"),
             c["ok"] if c["ok"] is not None else f"skipped: {c.get('reason')}"] for c in result["checks"]]  # fmt: skip
    table = format_table(["check", "latents", "shape", "max|diff|", "tolerance", "ok"],
                         [[_fmt(v) for v in row] for row in rows])  # fmt: skip
    head = f"{result['decoder']}: {result['kind']} graph, {result['dtype']}, opset {result['opset']}, latents {shape}"
    if result["ok"]:
        return f"{head}\n{table}\nwrote {result['out']} ({result['mb']} MB)"
    return f"{head}\n{table}\nexport check FAILED: nothing written"
