"""The light decoder's retention against distillation steps (docs/switch.md, weights/switch-taef2/README.md).

    python benchmarks/switch_retention.py --teacher-psnr 29.38 --out docs/switch/retention.png

Reads the trainer's validation log (``val_log.csv``: step, PSNR and SSIM of the EMA student on Kodak24 at 256²) and
plots the PSNR and the retention (student PSNR / teacher PSNR); step 0 is the pruned, undistilled start
(``--start-psnr``, measured by ``benchmarks/switch_tiles.py`` / ``switch_curve.py`` on the same photos).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", default="weights/switch-taef2/run/val_log.csv")
    ap.add_argument("--teacher-psnr", type=float, required=True, help="TAEF2 on the same photos, dB")
    ap.add_argument("--start-psnr", type=float, default=None, help="the pruned student before training, dB")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.log, newline="") as f:
        rows = [(int(r["step"]), float(r["psnr"])) for r in csv.DictReader(f)]
    if args.start_psnr is not None:
        rows.insert(0, (0, args.start_psnr))
    steps, psnr = [s for s, _ in rows], [p for _, p in rows]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, psnr, "C0.-", ms=3, label="student (EMA), Kodak24 256²")
    ax.axhline(args.teacher_psnr, color="k", ls="--", lw=0.8, label=f"TAEF2 {args.teacher_psnr:.2f} dB")
    ax.axhline(0.97 * args.teacher_psnr, color="C3", ls=":", lw=0.8, label="97% retention")
    ax.axvline(600, color="C7", lw=0.6)
    ax.axvline(4500, color="C7", lw=0.6)
    ax.set_xlabel("distillation step (batch 8, 128² crops; phase 1 < 600 ≤ phase 2 < 4500 ≤ phase 3, not reached)")
    ax.set_ylabel("PSNR vs photo (dB)")
    right = ax.secondary_yaxis("right", functions=(lambda p: 100 * p / args.teacher_psnr,
                                                   lambda r: r * args.teacher_psnr / 100))  # fmt: skip
    right.set_ylabel("retention (% of TAEF2's PSNR)")
    ax.set_xlim(0, 6000)
    ax.legend(loc="lower right")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    last = rows[-1]
    print(f"step {last[0]}: {last[1]:.2f} dB = {100 * last[1] / args.teacher_psnr:.1f}% of {args.teacher_psnr:.2f}")


if __name__ == "__main__":
    main()
