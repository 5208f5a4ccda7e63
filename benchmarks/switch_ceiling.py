"""What any per-photo router can recover (docs/switch.md): the distribution of the light decoder's per-photo PSNR
deficit against the heavy one, and the share of the total gap held by the photos with the largest deficits.

    python benchmarks/switch_ceiling.py runs/switch-curve-step4400/cache/*.pt

Reads the per-photo caches that ``benchmarks/switch_curve.py`` writes (OUT/cache/*.pt: PSNR of both decoders against
each photo). Routing the k photos with the largest gain ``heavy − light`` is the best any router can do for the mean
PSNR (the oracle-gain curve), so "≥ 60% of the gap at ≤ 20% heavy" needs the top 20% of photos to hold 60% of the
summed gap: their mean gap must be ≥ 3× the mean gap over all photos.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def ceiling(light_psnr: torch.Tensor, heavy_psnr: torch.Tensor, fractions: list[float]) -> dict:
    """(N,) PSNRs in dB -> gap quantiles and, per fraction f, the share of the summed gap in the top floor(f·N)."""
    gain = (heavy_psnr - light_psnr).double()
    top = gain.sort(descending=True).values
    n, total = gain.numel(), float(gain.sum())
    q = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    out = {"photos": n, "mean_gap_db": float(gain.mean()), "photos_with_negative_gain": int((gain < 0).sum()),
           "gap_quantiles_db": dict(zip(["min", "p10", "median", "p90", "max"], torch.quantile(gain, q).tolist(),
                                        strict=True)),
           "top_share": {}}  # fmt: skip
    for f in fractions:
        k = int(f * n + 1e-9)
        out["top_share"][f"{f:g}"] = {"k": k, "share_of_gap": float(top[:k].sum()) / total if total > 0 else None,
                                      "top_mean_over_mean": float(top[:k].mean() / gain.mean()) if k else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("caches", nargs="+", help="OUT/cache/*.pt files of benchmarks/switch_curve.py")
    ap.add_argument("--fractions", default="0.1,0.2,0.3")
    args = ap.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    result = {}
    for path in args.caches:
        data = torch.load(path, weights_only=True)
        result[Path(path).stem] = ceiling(data["light_psnr"], data["heavy_psnr"], fractions)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
