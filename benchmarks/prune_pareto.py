"""Flash-VAED pruning report: speed-up against quality retention per keep ratio, independence-aware vs magnitude.

Image TAEs (real weights; quality = PSNR on Kodak photos of the pruned decoder / the teacher's, no fine-tuning)::

    python benchmarks/prune_pareto.py image --teacher taef2 --ratios 0.75,0.5,0.25 --out runs/pareto-taef2 \\
        --weights-dir ../shared/weights/taesd --calib ../shared/data/images/bsds500/train \\
        --kodak ../shared/data/images/kodak24 [--extra distilled=runs/x/train/model.safetensors]

Video VAEs (random weights of the published config: structure and speed only): the teacher, the pruned decoder,
and the pruned decoder with operator swaps, timed on one clip, plus the per-stage dominant-operator table::

    python benchmarks/prune_pareto.py video --family wan2.1 --keep 1,0.5,0.125,0.125 --frames 3 --size 128 \\
        --out runs/prune-wan

Per-stage dominant operators of any decoders (registry names or saved students)::

    python benchmarks/prune_pareto.py profile taef2 runs/pareto-taef2/keep0.5-independent.safetensors --size 256

``image`` writes ``pareto.json`` / ``pareto.md`` / ``pareto.png``, ``video`` writes ``video.json`` / ``video.md``,
under ``--out``; all print their table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def image(args: argparse.Namespace) -> None:
    from fastdecoders.cli import main as cli

    argv = ["prune", args.teacher, "--pareto", args.ratios, "--methods", args.methods, "-o", args.out,
            "--calib", args.calib, "--calib-count", str(args.calib_count), "--calib-size", str(args.size),
            "--eval-images", args.kodak, "--eval-count", str(args.eval_count), "--eval-size", str(args.size),
            "--bench-size", str(args.bench_size), "--runs", str(args.runs), "--threads", str(args.threads),
            "--device", args.device]  # fmt: skip
    if args.weights_dir:
        argv += ["--weights-dir", args.weights_dir]
    if args.extra:
        argv += ["--extra", *args.extra]
    sys.exit(cli(argv))


def video(args: argparse.Namespace) -> None:
    from fastdecoders.commands import format_table
    from fastdecoders.latents import get_latent_space
    from fastdecoders.prune.calib import random_latents
    from fastdecoders.prune.core import decoder_parameters, prune
    from fastdecoders.prune.ops import profile_stages, swap_operators
    from fastdecoders.prune.report import _time_ms
    from fastdecoders.prune.source import reference_teacher

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    teacher = reference_teacher(args.family).eval()
    space = get_latent_space(args.family)
    side = args.size // space.spatial_factor
    calib = random_latents(teacher, 2, side, side, args.frames, seed=0)
    clip = random_latents(teacher, 1, side, side, args.frames, seed=1)
    result = prune(teacher, args.keep, calib, method="independent", batch_size=1)
    pruned = result.student
    sep3d = tuple(int(s) for s in args.sep3d.split(",") if s)
    frame2d = tuple(int(s) for s in args.frame2d.split(",") if s)
    swapped = swap_operators(pruned, sep3d, frame2d)
    rows, report = [], {"family": args.family, "keep": list(result.keep), "latents": list(clip.shape),
                        "widths": {"teacher": list(result.teacher_widths), "student": list(result.student_widths)},
                        "swaps": {"sep3d": list(sep3d), "frame2d": list(frame2d)}, "threads": args.threads,
                        "runs": args.runs, "models": {}}  # fmt: skip
    base = None
    for label, model in (("teacher", teacher), ("pruned", pruned), ("pruned+swaps", swapped)):
        ms, median = _time_ms(model, clip, args.runs)
        out = model(clip)
        base = base or ms
        report["models"][label] = {"params": decoder_parameters(model), "ms": ms, "ms_median": median,
                                   "speedup": base / ms, "output": list(out.shape),
                                   "profile": profile_stages(model, clip)}  # fmt: skip
        rows.append(
            [label, f"{decoder_parameters(model):,}", f"{ms:.0f}", f"{base / ms:.2f}x", "x".join(map(str, out.shape))]
        )
    lines = [format_table(["decoder", "params", "ms (min)", "speed-up", "output"], rows), ""]
    for label, info in report["models"].items():
        prof = [[r["stage"], f"{r['ms']:.0f}", f"{r['share']:.0%}", r["dominant"],
                 ", ".join(f"{o['op'].removeprefix('aten::')} {o['share']:.0%}" for o in r["ops"][:3])]
                for r in info["profile"]["stages"]]  # fmt: skip
        lines += [f"{label}: per-stage profile (ms under the profiler)",
                  format_table(["stage", "ms", "share", "dominant", "top ops (share of stage)"], prof), ""]  # fmt: skip
    text = "\n".join(lines)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "video.json").write_text(json.dumps(report, indent=2))
    (out_dir / "video.md").write_text(text + "\n")
    print(text)


def profile(args: argparse.Namespace) -> None:
    from fastdecoders.commands import format_table
    from fastdecoders.latents import get_latent_space
    from fastdecoders.prune.calib import random_latents
    from fastdecoders.prune.ops import profile_stages
    from fastdecoders.weights import load_decoder

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    rows = []
    for name in args.decoders:
        decoder = load_decoder(name, weights_dir=args.weights_dir).eval()
        side = args.size // get_latent_space(decoder.latent_space_name).spatial_factor
        table = profile_stages(decoder, random_latents(decoder, 1, side, side, args.frames))
        for r in table["stages"]:
            ops = ", ".join(f"{o['op'].removeprefix('aten::')} {o['share']:.0%}" for o in r["ops"][:3])
            rows.append([name, r["stage"], f"{r['ms']:.1f}", f"{r['share']:.0%}", r["dominant"], ops])
    print(format_table(["decoder", "stage", "ms", "share", "dominant", "top ops (share of stage)"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    img = sub.add_parser("image", help="real-weight TAE: Pareto of speed-up vs Kodak PSNR retention")
    img.add_argument("--teacher", default="taef2")
    img.add_argument("--ratios", default="0.75,0.5,0.25")
    img.add_argument("--methods", default="independent,magnitude")
    img.add_argument("--out", required=True)
    img.add_argument("--weights-dir", default=None)
    img.add_argument("--calib", required=True, help="calibration photos (not the evaluation set)")
    img.add_argument("--calib-count", type=int, default=16)
    img.add_argument("--kodak", required=True)
    img.add_argument("--eval-count", type=int, default=24)
    img.add_argument("--size", type=int, default=256, help="photo side for calibration and evaluation")
    img.add_argument("--bench-size", type=int, default=512)
    img.add_argument("--runs", type=int, default=9)
    img.add_argument("--threads", type=int, default=1)
    img.add_argument("--device", default="cpu")
    img.add_argument("--extra", nargs="*", default=[], help="LABEL=PATH students to add (e.g. distilled ones)")
    vid = sub.add_parser("video", help="random-weight Wan/LTX decoder: speed and per-stage operator profile")
    vid.add_argument("--family", default="wan2.1", choices=["wan2.1", "ltx-video"])
    vid.add_argument("--keep", default="1,0.5,0.125,0.125")
    vid.add_argument("--sep3d", default="0,1")
    vid.add_argument("--frame2d", default="2,3")
    vid.add_argument("--frames", type=int, default=3, help="latent frames")
    vid.add_argument("--size", type=int, default=128, help="output side, pixels")
    vid.add_argument("--runs", type=int, default=3)
    vid.add_argument("--threads", type=int, default=1)
    vid.add_argument("--out", required=True)
    prof = sub.add_parser("profile", help="per-stage dominant-operator table of saved/registered decoders")
    prof.add_argument("decoders", nargs="+", help="registry names or weights paths")
    prof.add_argument("--size", type=int, default=256, help="output side, pixels")
    prof.add_argument("--frames", type=int, default=2, help="latent frames (video decoders)")
    prof.add_argument("--threads", type=int, default=1)
    prof.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    {"image": image, "video": video, "profile": profile}[args.mode](args)


if __name__ == "__main__":
    main()
