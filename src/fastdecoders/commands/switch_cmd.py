"""``fastdecoders switch fit LIGHT HEAVY --images DIR [--budget 0.2 | --floor 0.95@1] -o switch.safetensors``.

Parses the arguments and calls ``fastdecoders.switching.fit.fit_from_images`` (encode the photos, decode them with
both decoders -- the only "labels" are the heavy decoder's own outputs --, train the gate, calibrate its threshold on
the held-back rest, write the switch file); prints its report.
"""

from __future__ import annotations

import argparse

import torch

from fastdecoders.commands import add_weights_dir, format_table
from fastdecoders.switching.calibrate import parse_floor
from fastdecoders.switching.fit import fit_from_images


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
    parser.add_argument("--score", choices=["deficit", "gain"], default="deficit",
                        help="what the gate predicts: deficit = the light output's error against the heavy output "
                        "(label-free); gain = the heavy decoder's PSNR gain over the light one against the "
                        "photo")  # fmt: skip
    parser.add_argument("--size", type=int, default=256, help="photos are centre-cropped and resized to this side")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many photos")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of photos held back for calibration")
    parser.add_argument("--epochs", type=int, default=300, help="gate training epochs (full batch)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("-o", "--out", required=True, help="switch file to write (.safetensors)")
    add_weights_dir(parser)


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    return fit_from_images(args.light, args.heavy, args.images, args.out, size=args.size, limit=args.limit,
                           kind=args.gate, budget=args.budget, floor=parse_floor(args.floor) if args.floor else None,
                           holdout=args.holdout, epochs=args.epochs, weights_dir=args.weights_dir,
                           score=args.score)  # fmt: skip


def render(result: dict) -> str:
    rows = [["gate input", result["gate_input"]], ["items fit / held back",
             f"{result['items_fit']} / {result['items_held_back']}"],
            ["target", result["target"]],
            [f"threshold (predicted {result['gate_score']}, dB)", f"{result['threshold_db']:.3f}"],
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
