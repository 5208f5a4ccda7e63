"""``fastdecoders switch fit LIGHT HEAVY --images DIR [--budget 0.2 | --floor 0.95@1] -o switch.safetensors``.

Encodes the photos with the latent space's tiny encoder, decodes them with both decoders (the only "labels" are
the heavy decoder's own outputs), trains the gate on most of them and calibrates its threshold on the held-back
rest, then writes the switch file (gate + threshold + the two decoders' names) and prints the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fastdecoders.commands import add_weights_dir, format_table
from fastdecoders.errors import FastDecodersError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["fit"], help="fit: train and calibrate a switch")
    parser.add_argument("light", help="the light decoder: registry name or weights file")
    parser.add_argument("heavy", help="the heavy decoder: registry name or weights file ('pipeline:vae' is not "
                        "possible here: fitting needs the heavy decoder's outputs)")  # fmt: skip
    parser.add_argument("--images", required=True, help="folder of unlabelled photos (searched recursively)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--budget", type=float, help="fraction of items routed heavy, e.g. 0.2")
    target.add_argument("--floor", help="quality floor FRACTION@DB: e.g. 0.95@1 = 95%% of items within 1 dB of "
                        "the heavy decoder's PSNR")  # fmt: skip
    parser.add_argument("--gate", choices=["latent", "features"], default="latent",
                        help="gate input: the latent, or the light decoder's first-stage features")  # fmt: skip
    parser.add_argument("--size", type=int, default=256, help="photos are centre-cropped and resized to this side")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many photos")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of photos held back for calibration")
    parser.add_argument("--epochs", type=int, default=300, help="gate training epochs (full batch)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("-o", "--out", required=True, help="switch file to write (.safetensors)")
    add_weights_dir(parser)


def run(args: argparse.Namespace) -> dict:
    from fastdecoders.switching.calibrate import parse_floor
    from fastdecoders.switching.core import check_pair
    from fastdecoders.switching.fit import encode_photos, fit_switch, load_photos
    from fastdecoders.weights import load_decoder

    if not str(args.out).endswith(".safetensors"):
        raise FastDecodersError(f"-o: expected a .safetensors path, got {args.out}")
    if args.budget is not None and not 0 <= args.budget <= 1:
        raise FastDecodersError(f"--budget: expected a fraction in [0, 1], got {args.budget}")
    if not 0 < args.holdout < 1:
        raise FastDecodersError(f"--holdout: expected a fraction in (0, 1), got {args.holdout}")
    floor = parse_floor(args.floor) if args.floor else None
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.images).is_dir():
        raise FastDecodersError(f"--images: expected a folder of photos, got {args.images}")
    light = load_decoder(args.light, weights_dir=args.weights_dir)
    heavy = load_decoder(args.heavy, weights_dir=args.weights_dir)
    check_pair(light, heavy)  # before the (slow) encoding and decoding
    photos, _ = load_photos(args.images, args.size, args.limit)
    with torch.no_grad():
        latents = encode_photos(photos, light.latent_space_name, args.weights_dir)
    sw, report = fit_switch(light, heavy, latents, photos, light_name=args.light, heavy_name=args.heavy,
                            kind=args.gate, budget=args.budget, floor=floor, holdout=args.holdout,
                            epochs=args.epochs)  # fmt: skip
    report["file"] = sw.save_pretrained(args.out, extra={"report": report})
    return report


def render(result: dict) -> str:
    rows = [["gate input", result["gate_input"]], ["items fit / held back",
             f"{result['items_fit']} / {result['items_held_back']}"],
            ["target", result["target"]], ["threshold (predicted deficit, dB)", f"{result['threshold_db']:.3f}"],
            ["held-back items routed heavy", f"{result['held_back_heavy_fraction']:.1%}"],
            ["gate rank correlation (held back)", f"{result['gate_spearman_held_back']:.3f}"],
            ["gate FLOPs / light FLOPs", f"{result['flops']['gate_over_light']:.2%}"]]  # fmt: skip
    if "held_back_psnr" in result:
        p = result["held_back_psnr"]
        rows.append(["held-back PSNR light / switch / heavy",
                     f"{p['light']:.2f} / {p['switch']:.2f} / {p['heavy']:.2f} dB ({p['gap_recovered']:.0%} of gap)"])
    if "held_back_within_floor" in result:
        rows.append(["held-back items within the floor", f"{result['held_back_within_floor']:.1%}"])
    return format_table(["switch", "value"], rows) + f"\nwrote {result['file']}"
