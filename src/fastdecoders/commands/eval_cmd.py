"""``fastdecoders eval DECODER... --images DIR | --videos DIR | --latents DIR -o OUT``: quality on real inputs.

Prints one line per decoder (or, with ``--json``, the whole result) and writes OUT/report.{md,html},
OUT/results.json and OUT/figures/. Latents, features and per-input metrics are cached in OUT/cache (``--cache``),
so running the same command again after an interruption resumes.
"""

from __future__ import annotations

import argparse
import dataclasses

from fastdecoders.commands import add_device, add_weights_dir, format_table
from fastdecoders.config import from_dict
from fastdecoders.errors import FastDecodersError
from fastdecoders.eval.config import EvalConfig
from fastdecoders.eval.evaluate import ALL_METRICS, evaluate
from fastdecoders.eval.features import VideoFeatures
from fastdecoders.eval.lpips import LPIPS_ENV
from fastdecoders.eval.report import COLUMNS, format_value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "decoders", nargs="+", metavar="DECODER", help="registry names, weights files/folders or hub ids"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR", help="folder of images (or a .txt list of image paths)")
    source.add_argument(
        "--videos",
        metavar="DIR",
        help="folder of videos (mp4/avi/mkv/mov/webm) and/or of frame folders (or a .txt list)",
    )
    source.add_argument(
        "--latents",
        metavar="DIR",
        help="folder of pre-computed diffusion-space latent files (safetensors/pt); compared with --teacher only",
    )
    parser.add_argument("-o", "--out", required=True, help="output folder for the report, figures and cache")
    parser.add_argument(
        "--teacher",
        default=None,
        help="decoder whose output is the reference for vs_teacher metrics (same latent space)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="resize the short side to SIZE and centre-crop to "
        "SIZE²; without it: native size, centre-cropped to a multiple of the latent factor",
    )
    parser.add_argument("--limit", type=int, default=None, help="use at most this many input files (sorted order)")
    parser.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated subset of {','.join(ALL_METRICS)}"
        "; without it: all whose weights are found, the missing ones listed as skipped",
    )
    video = parser.add_argument_group("video")
    video.add_argument("--clip-length", type=int, default=17, help="frames per clip (causal video VAEs: 1 + k·factor)")
    video.add_argument("--frame-step", type=int, default=1, help="take every N-th frame")
    video.add_argument("--clips-per-video", type=int, default=1, help="consecutive clips from frame 0")
    video.add_argument("--fid-frames", type=int, default=4, help="evenly spaced frames per clip in the frame FID")
    video.add_argument(
        "--fvd-net",
        default=None,
        help="TorchScript video feature network for FVD: (B, 3, T, S, S) -> (B, D), e.g. an I3D or VideoMAE V2 export",
    )
    video.add_argument("--fvd-frames", type=int, default=16, help="frames the FVD network takes")
    video.add_argument("--fvd-size", type=int, default=224, help="frame side the FVD network takes")
    video.add_argument("--fvd-range", default="pm1", choices=VideoFeatures.RANGES, help="FVD network input range")
    parser.add_argument(
        "--lpips-weights",
        default=None,
        metavar="FILE|DIR",
        help=f"torchvision alexnet/vgg16 ImageNet checkpoint(s) for LPIPS; then ${LPIPS_ENV}, then torch's hub cache",
    )
    parser.add_argument(
        "--vae",
        default=None,
        metavar="DIR",
        help="encode with this diffusers VAE folder instead of the family's tiny encoder",
    )
    parser.add_argument("--latents-space", default=None, help="latent space of decoder files that do not say")
    parser.add_argument("--cache", default=None, help="cache folder; without it: OUT/cache")
    parser.add_argument("--no-resume", action="store_true", help="recompute everything (the cache is rewritten)")
    parser.add_argument("--grids", type=int, default=4, help="inputs shown side by side in the report")
    parser.add_argument("--crop-size", type=int, default=128, help="side of the 1:1 detail crops")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per encoder/decoder call")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_weights_dir(parser)
    add_device(parser)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    kind = "images" if args.images else "videos" if args.videos else "latents"
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics else None
    if metrics is not None and not metrics:
        raise FastDecodersError("--metrics is empty")
    for flag in ("limit", "grids", "crop_size", "batch_size", "fid_frames"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "grids" else 1):
            raise FastDecodersError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    renamed = {"kind": kind, "source": args.images or args.videos or args.latents, "metrics": metrics,
               "grid_count": args.grids, "resume": not args.no_resume, "progress": not args.no_progress}  # fmt: skip
    same = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig) if hasattr(args, f.name)}
    return from_dict(EvalConfig, {**same, **renamed}, "eval")


def run(args: argparse.Namespace) -> dict:
    return evaluate(args.decoders, config_from_args(args))


def render(result: dict) -> str:
    cols = [c for c in COLUMNS if c[0] in result["metrics"]]
    rows = [
        [name, d["latent_space"], f"{d['ms_per_image']:.1f}" if d.get("ms_per_image") is not None else "-"]
        + [format_value(d, k, digits) for k, _, digits, _ in cols]
        for name, d in result["decoders"].items()
    ]
    lines = [format_table(["decoder", "latents", "ms/img"] + [t for _, t, _, _ in cols], rows)]
    if result.get("teacher"):
        vs = [
            [name] + [format_value(d["vs_teacher"], k, digits) for k, _, digits, _ in cols]
            for name, d in result["decoders"].items()
            if d.get("vs_teacher")
        ]
        if vs:
            lines += [
                "",
                f"against the teacher ({result['teacher']}):",
                format_table(["decoder"] + [t for _, t, _, _ in cols], vs),
            ]
    inputs = result["inputs"]
    lines.append(
        f"\n{inputs['evaluated']} {inputs['kind']} evaluated, {inputs['skipped']} skipped; report: {result['report']}"
    )
    for entry in result["skipped"]:
        lines.append(f"  skipped {entry['path']}: {entry['why']}")
    for note in result["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)
