"""``fastdecoders prune TEACHER --keep RATIO -o OUT``: a pruned decoder of the teacher's architecture and latent space.

``--keep`` takes one ratio or one per stage, latent side first (``1,0.5,0.125,0.125`` is Flash-VAED's Wan
384/192/24/12). ``--pareto 0.75,0.5,0.25`` instead prunes at each ratio with each ``--methods`` entry and writes a
speed/quality report (``report.py``) to ``-o`` (a folder).

TEACHER is a registry name or weights file (TAE decoders, saved ``diffusers-vae`` students), a diffusers VAE folder
(``config.json`` of an AutoencoderKL / AutoencoderKLWan / AutoencoderKLLTXVideo), or ``random:SPACE`` (a diffusers VAE
of that family's published config with random weights, e.g. ``random:wan2.1``: for structure and speed checks).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from fastdecoders.commands import add_device, add_weights_dir, format_table
from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import get_latent_space
from fastdecoders.models.fileformat import save_decoder
from fastdecoders.prune import report
from fastdecoders.prune.calib import calibration_latents, encode_photos, load_photos, random_latents
from fastdecoders.prune.core import decoder_parameters, prune
from fastdecoders.prune.distill import load_recipe, phase_steps, run_recipe
from fastdecoders.prune.ops import swap_operators
from fastdecoders.prune.source import load_source
from fastdecoders.prune.widths import parse_keep
from fastdecoders.weights import load_decoder


def _stages(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise FastDecodersError(f"stage lists are comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("teacher", help="registry name, weights file, diffusers VAE folder, random:SPACE, or a "
                        "Flash-VAED recipe (configs/flash-vaed-*.yaml: prune, then distil in phases)")  # fmt: skip
    parser.add_argument("--keep", default="0.5", help="kept channel ratio, or one per stage (latent side first)")
    parser.add_argument("-o", "--out", required=True, help="student .safetensors (or a folder with --pareto)")
    parser.add_argument(
        "--method",
        default="independent",
        choices=["independent", "pivoted", "magnitude"],
        help="channel selection: greedy independence-aware, pivoted QR, or filter L1 magnitude",
    )
    parser.add_argument(
        "--no-fold", action="store_true", help="plain slicing: do not rebuild dropped channels into the next layers"
    )
    parser.add_argument(
        "--refine",
        action="store_true",
        help="sequential least-squares correction of every layer against the teacher (slower)",
    )
    parser.add_argument("--multiple", type=int, default=8, help="round pruned widths to a multiple of this")
    parser.add_argument("--latents", default=None, help="latent space, where the teacher does not say (e.g. sdxl)")
    parser.add_argument("--random-init", action="store_true", help="registry teacher with random weights")
    calib = parser.add_argument_group("calibration")
    calib.add_argument("--calib", default=None, help="folder of photos, encoded by the family's tiny encoder")
    calib.add_argument("--calib-latents", default=None, help="a latents file (safetensors/pt) in the teacher's layout")
    calib.add_argument("--calib-count", type=int, default=32, help="photos (or random latents) to calibrate on")
    calib.add_argument("--calib-size", type=int, default=256, help="photo side in pixels")
    calib.add_argument("--calib-frames", type=int, default=3, help="latent frames of random video latents")
    calib.add_argument("--batch-size", type=int, default=4, help="latents per forward pass while calibrating and "
                       "evaluating (lower it to save memory)")  # fmt: skip
    ops = parser.add_argument_group("dominant-operator swaps (video decoders)")
    ops.add_argument("--sep3d-stages", default=None, help="stages whose resnet convs become depthwise-separable "
                     "causal 3-D convs, e.g. 0,1")  # fmt: skip
    ops.add_argument("--frame2d-stages", default=None, help="stages whose resnet convs become per-frame 2-D convs")
    pareto = parser.add_argument_group("Pareto report (--pareto)")
    pareto.add_argument("--pareto", default=None, help="keep ratios to sweep, e.g. 0.75,0.5,0.25")
    pareto.add_argument(
        "--methods",
        default="independent,magnitude",
        help="selection methods to compare; magnitude slices, the others fold; a +fold / -nofold suffix overrides",
    )
    pareto.add_argument("--eval-images", default=None, help="held-out photos for quality (image decoders)")
    pareto.add_argument("--eval-count", type=int, default=24, help="held-out photos used for the PSNR")
    pareto.add_argument("--eval-size", type=int, default=256, help="side in pixels the held-out photos are resized "
                        "and centre-cropped to")  # fmt: skip
    pareto.add_argument("--bench-size", type=int, default=None, help="pixel side of the timed decode (default: "
                        "eval size for images; 128 px with --calib-frames latent frames for video)")  # fmt: skip
    pareto.add_argument("--runs", type=int, default=5, help="timed decodes per model (the fastest is reported)")
    pareto.add_argument("--threads", type=int, default=None, help="torch CPU threads (1: steadier on a shared CPU)")
    pareto.add_argument("--extra", nargs="*", default=[], help="more students to place on the plot (LABEL=PATH)")
    recipe = parser.add_argument_group("distillation recipe (TEACHER is a .yaml)")
    recipe.add_argument("--phase-steps", default=None, help="override each phase's steps, e.g. 5,5,5 (smoke runs)")
    add_weights_dir(parser)
    add_device(parser)


def _calibration(args: argparse.Namespace, teacher) -> tuple[torch.Tensor, str]:
    return calibration_latents(teacher, latents_path=args.calib_latents, photos=args.calib, count=args.calib_count,
                               size=args.calib_size, frames=args.calib_frames, weights_dir=args.weights_dir,
                               device=args.device)  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    if str(args.teacher).endswith((".yaml", ".yml")):
        recipe = load_recipe(args.teacher)
        phase_steps(args.phase_steps, recipe)
        return run_recipe(recipe, args.out, args.device, args.weights_dir)
    dtype = getattr(torch, args.dtype)
    teacher = load_source(args.teacher, args.latents, args.weights_dir, args.random_init, args.device, dtype)
    if getattr(teacher, "latent_space_name", None) is None:
        raise FastDecodersError(f"{args.teacher}: unknown latent space; pass --latents")
    if args.pareto:
        return _pareto(args, teacher)
    keep = parse_keep(args.keep)
    sep3d, frame2d = _stages(args.sep3d_stages), _stages(args.frame2d_stages)
    if (sep3d or frame2d) and getattr(teacher, "latent_ndim", 4) != 5:
        raise FastDecodersError(f"expected a video teacher (Wan, LTX diffusers-vae) for operator swaps, got "
                                f"{type(teacher).__name__}")  # fmt: skip
    latents, calib_note = _calibration(args, teacher)
    result = prune(teacher, keep, latents.to(args.device, dtype), method=args.method, fold=not args.no_fold,
                   multiple=args.multiple, batch_size=args.batch_size, refine=args.refine)  # fmt: skip
    student = result.student
    if sep3d or frame2d:
        student = swap_operators(student, sep3d, frame2d)
    base = getattr(teacher, "registry_name", None) or Path(str(args.teacher)).stem
    name = f"{base.replace('random:', '')}-keep{_keep_label(keep)}-{args.method}"
    student.registry_name = name
    student.latent_space_name = teacher.latent_space_name
    checkpoint = save_decoder(student, args.out, extra={"pruned_from": str(args.teacher), "keep": list(keep),
                                                        "method": args.method})  # fmt: skip
    return {
        "teacher": str(args.teacher),
        "student": name,
        "keep": keep[0] if len(keep) == 1 else sum(result.keep) / len(result.keep),
        "params": [decoder_parameters(teacher), decoder_parameters(student)],
        "checkpoint": checkpoint,
        "keep_per_stage": list(result.keep),
        "widths": {"teacher": list(result.teacher_widths), "student": list(result.student_widths)},
        "method": args.method,
        "folded": not args.no_fold,
        "refined": bool(args.refine),
        "swaps": [list(s) for s in getattr(student.config, "swaps", ())],
        "latents": teacher.latent_space_name,
        "calibration": calib_note,
        "notes": result.notes,
    }


def _keep_label(keep: tuple[float, ...]) -> str:
    return "-".join(f"{k:g}" for k in keep)


def render(result: dict) -> str:
    if "phases" in result:
        rows = [[p["name"], p["kind"], ", ".join(f"{k}={v}" for k, v in p["loss"].items()), p["model"]]
                for p in result["phases"]]  # fmt: skip
        head = f"{result['teacher']} -> {result['student']} (widths {result['widths']['student']})\n"
        return head + format_table(["phase", "kind", "loss", "model"], rows)
    if "points" in result:
        return report.render_pareto(result)
    params = result["params"]
    rows = [
        ["teacher", result["teacher"]],
        ["student", result["student"]],
        ["keep", ", ".join(f"{k:g}" for k in result["keep_per_stage"])],
        ["widths", f"{result['widths']['teacher']} -> {result['widths']['student']}"],
        ["params", f"{params[0]:,} -> {params[1]:,} ({params[1] / max(params[0], 1):.1%})"],
        ["method", result["method"] + " + fold" * result["folded"] + " + refine" * result["refined"]],
        ["swaps", str(len(result["swaps"]))],
        ["calibration", result["calibration"]],
        ["checkpoint", result["checkpoint"]],
    ]
    text = format_table(["", ""], rows)
    return text + "".join(f"\nnote: {n}" for n in result["notes"])


def _pareto(args: argparse.Namespace, teacher: torch.nn.Module) -> dict[str, Any]:
    """``fastdecoders prune TEACHER --pareto 0.75,0.5,0.25 -o DIR``: the sweep, its files, and the result."""
    if args.threads:
        torch.set_num_threads(args.threads)
    keeps = parse_keep(args.pareto)
    variants = report.parse_methods(args.methods)
    space = get_latent_space(teacher.latent_space_name)
    video = getattr(teacher, "latent_ndim", 4) == 5
    dtype = next(teacher.parameters()).dtype
    calib, _ = _calibration(args, teacher)
    photos = None
    if args.eval_images and not video:
        photos = load_photos(args.eval_images, args.eval_count, args.eval_size)
        eval_latents = encode_photos(photos, space.name, args.weights_dir, args.device)
    else:
        side = max(1, args.eval_size // space.spatial_factor)
        count = min(args.eval_count, 4) if video else args.eval_count
        eval_latents = random_latents(teacher, count, side, side, args.calib_frames, seed=1)  # not the calib draw
    bench_px = args.bench_size or (args.eval_size if not video else 128)
    side = max(1, bench_px // space.spatial_factor)
    bench = random_latents(teacher, 1, side, side, args.calib_frames, seed=2)
    extra = {}
    for item in args.extra:
        label, _, path = item.partition("=")
        if not path:
            raise FastDecodersError(f"--extra expects LABEL=PATH, got {item!r}")
        extra[label] = load_decoder(path, weights_dir=args.weights_dir).to(args.device, dtype)
    result = report.pareto(teacher, keeps, variants, calib.to(args.device, dtype), eval_latents.to(args.device, dtype),
                    bench.to(args.device, dtype), photos, args.out, extra, multiple=args.multiple,
                    batch_size=args.batch_size, runs=args.runs)  # fmt: skip
    result["teacher"]["name"] = str(args.teacher)
    result["files"] = report.write_report(result, args.out, f"{args.teacher}: pruning without fine-tuning")
    return result
