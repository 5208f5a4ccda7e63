"""Per-step cost of live previews, as ms and as % of the pipeline's own step, measured in the same run.

Each run attaches ``fastdecoders.preview(pipe, decoder, every=1)``; the callback times its own work (decode + copy to
the CPU, in-memory sink) and the interval since it last returned (the pipeline's step without the preview). Medians
over the steps after the first. Pipelines: the tiny random ones (fastdecoders.testing.tiny_pipelines), and the real-size
SDXL UNet (stabilityai/stable-diffusion-xl-base-1.0 config, random weights, CFG on) at a small resolution.

    python benchmarks/preview_overhead.py                       # tiny pipelines only (seconds)
    python benchmarks/preview_overhead.py --sdxl 128 --sdxl-steps 5   # + real-size SDXL UNet at 128² (~11 GB RAM)
    python benchmarks/preview_overhead.py --sdxl 1024 --sdxl-steps 10 --device cuda    # GPU (fp16 UNet)
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

import fastdecoders
from fastdecoders.testing.tiny_pipelines import tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
TAE = {"sd": "taesd", "sdxl": "taesdxl", "flux": "taef1"}


def run(pipe, kwargs: dict, decoder: str, steps: int, weights_dir: str) -> dict:
    preview = fastdecoders.preview(pipe, decoder, weights_dir=weights_dir)
    start = time.perf_counter()
    pipe(**kwargs, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="latent",
         callback_on_step_end=preview)  # fmt: skip
    total = time.perf_counter() - start
    shape = tuple(preview.frames[-1].images.shape)
    return {"decoder": decoder, "preview_shape": shape, "run_s": round(total, 3), **preview.overhead()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-size", type=int, default=64)
    parser.add_argument("--tiny-steps", type=int, default=12)
    parser.add_argument("--sdxl", type=int, default=0, help="also the real-size SDXL UNet at this resolution")
    parser.add_argument("--sdxl-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where the pipelines run (cuda: fp16 for the SDXL UNet)")
    parser.add_argument("--weights-dir", default=str(ROOT.parent / "shared/weights/taesd"))
    parser.add_argument("-o", "--output", help="JSON file for the rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with torch.no_grad():
        for kind in ("sd", "sdxl", "flux"):
            pipe, kwargs = tiny_pipeline(kind)
            pipe.to(args.device)
            kwargs = {**kwargs, "height": args.tiny_size, "width": args.tiny_size}
            for decoder in ("linear", TAE[kind]):
                run(pipe, kwargs, decoder, 2, args.weights_dir)  # warm-up run, not kept
                row = run(pipe, kwargs, decoder, args.tiny_steps, args.weights_dir)
                rows.append({"pipeline": f"tiny-{kind}", "size": args.tiny_size, **row})
        if args.sdxl:
            from fastdecoders.bench.pipeline import build_pipeline
            from fastdecoders.bench.speed import Size

            built = time.perf_counter()
            device = torch.device(args.device)
            dtype = torch.float16 if device.type == "cuda" else torch.float32
            pipe, kwargs = build_pipeline("sdxl", False, device, dtype, Size(args.sdxl, args.sdxl))
            print(f"built the SDXL pipeline in {time.perf_counter() - built:.0f} s", flush=True)
            for decoder in ("linear", "taesdxl"):
                row = run(pipe, kwargs, decoder, args.sdxl_steps, args.weights_dir)
                rows.append({"pipeline": "sdxl-unet (real size, CFG)", "size": args.sdxl, **row})
                print(rows[-1], flush=True)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "machine": f"{platform.machine()}, {args.device}, {args.threads} torch thread(s), torch {torch.__version__}",
        "command": " ".join(["python benchmarks/preview_overhead.py", *sys.argv[1:]]),
    }
    print(json.dumps(meta))
    print(f"{'pipeline':28} {'size':>5} {'preview':8} {'shape':18} {'preview ms':>10} {'step ms':>9} {'% step':>7}")
    for r in rows:
        print(f"{r['pipeline']:28} {r['size']:>5} {r['decoder']:8} {str(r['preview_shape']):18} "
              f"{r['preview_ms']:>10.2f} {r['step_ms']:>9.1f} {r['percent']:>7.2f}")  # fmt: skip
    if args.output:
        Path(args.output).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
