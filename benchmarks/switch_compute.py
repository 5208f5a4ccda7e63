"""Compute of a switch whose heavy decoder is an original VAE (docs/switch.md): FLOPs and CPU time per item of the
light decoder, the heavy one and a latent gate, and the switch's compute against all-heavy at a few heavy fractions.

    python benchmarks/switch_compute.py --light taesdxl --heavy sdxl-vae --size 256 --out runs/switch-compute

Weights are random (``build_decoder``): compute does not depend on weight values, quality is not measured here (no
original-VAE weights on this machine). FLOPs by ``count_flops``; CPU time one thread, median of ``--runs`` after a
warm-up, all in this one run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fastdecoders.bench.flops import count_flops
from fastdecoders.bench.timing import time_fn
from fastdecoders.latents import get_latent_space
from fastdecoders.models import build_decoder
from fastdecoders.switching import Gate, GateConfig


def median_ms(fn, runs: int) -> float:
    """Median ms of ``runs`` timed calls after one warm-up (CPU: the clock needs no device sync)."""
    return time_fn(fn, warmup=1, runs=runs).ms_median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--light", default="taesdxl")
    ap.add_argument("--heavy", default="sdxl-vae")
    ap.add_argument("--size", type=int, default=256, help="output side in pixels")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fractions", default="0.1,0.167,0.2")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    light, heavy = build_decoder(args.light).eval(), build_decoder(args.heavy).eval()
    space = get_latent_space(light.latent_space_name)
    side = args.size // space.spatial_factor
    z = torch.randn(1, space.channels, side, side, generator=torch.Generator().manual_seed(0))
    gate = Gate(GateConfig(space.channels)).eval()
    parts = {"light": lambda: light(z), "heavy": lambda: heavy.decode_latents(z), "gate": lambda: gate(z)}
    with torch.no_grad():
        flops = {k: count_flops(fn) for k, fn in parts.items()}
        ms = {k: median_ms(fn, args.runs) for k, fn in parts.items()}
    result = {"light": args.light, "heavy": args.heavy, "size": args.size, "flops": flops, "ms": ms, "switch": {}}
    for f in (float(x) for x in args.fractions.split(",")):
        fl = flops["gate"] + (1 - f) * flops["light"] + f * flops["heavy"]
        t = ms["gate"] + (1 - f) * ms["light"] + f * ms["heavy"]
        result["switch"][f"{f:g}"] = {"flops_ratio_vs_heavy": flops["heavy"] / fl,
                                      "time_ratio_vs_heavy": ms["heavy"] / t}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "switch_compute.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
