"""taew2_1 (TAEHV layout) against the Wan 2.1 VAE decoder (diffusers AutoencoderKLWan), random weights, in one run.

    python benchmarks/taehv_video.py --device cpu --threads 2 --size 17x256x256 --lengths 5,17,33,65,129

Reports, for the clip of ``--size`` (T pixel frames x H x W): median decode time (after warm-up, synchronised) and
peak memory of each decoder, their ratio, and taew2_1's streaming decode (one latent frame at a time); then, for each
clip length of ``--lengths`` (pixel frames), taew2_1's peak memory decoding in parallel and streaming (should be flat).
Peak memory: the CUDA allocator's peak on a GPU; on the CPU the peak of live tensor bytes (``fastdecoders.tiling.
measure_peak_bytes``), which leaves out the allocator's and oneDNN's scratch. Writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from fastdecoders.bench.timing import default_sync, time_fn
from fastdecoders.latents import get_latent_space
from fastdecoders.models import build_decoder
from fastdecoders.tiling import measure_peak_bytes


def _latents(space, frames: int, h: int, w: int, device) -> torch.Tensor:
    t = space.latent_frames(frames)
    f = space.spatial_factor
    return torch.randn(1, space.channels, t, h // f, w // f, device=device)


def _streamed(decoder, z: torch.Tensor) -> torch.Tensor:
    stream = decoder.stream(latent_frames=z.shape[2])
    n = 0
    for i in range(z.shape[2]):
        n += stream.push(z[:, :, i : i + 1]).shape[2]  # frames are dropped as they come, like an MP4 writer's
    stream.flush()
    return torch.tensor(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--size", default="17x256x256", help="TxHxW pixel frames of the compared clip")
    parser.add_argument("--lengths", default="5,17,33,65,129", help="pixel frame counts for the streaming sweep")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--teacher-runs", type=int, default=2, help="timed runs of the (much slower) Wan decoder")
    parser.add_argument("--parallel-max", type=int, default=33, help="longest clip also decoded in parallel (its "
                        "memory grows with the clip: the point of streaming)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-teacher", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = default_sync(device)
    space = get_latent_space("wan2.1")
    frames, h, w = (int(v) for v in args.size.split("x"))
    z = _latents(space, frames, h, w, device)
    ours = build_decoder("taew2_1").to(device).eval()
    rows = {}
    candidates = {"taew2_1 (parallel)": ours, "taew2_1 (streaming)": lambda x: _streamed(ours, x)}
    if not args.no_teacher:
        candidates["wan2.1-vae"] = build_decoder("wan2.1-vae").to(device).eval()
    for name, fn in candidates.items():
        runs = args.teacher_runs if name == "wan2.1-vae" else args.runs
        with torch.no_grad():
            timing = time_fn(lambda fn=fn: fn(z), warmup=args.warmup, runs=runs, sync=sync)
        peak, _ = measure_peak_bytes(lambda fn=fn: fn(z), device)
        rows[name] = {"ms_median": timing.ms_median, "ms_spread": timing.ms_spread, "runs": runs,
                      "peak_mib": peak / 2**20}  # fmt: skip
        print(f"# {name}: {rows[name]}", file=sys.stderr, flush=True)
    sweep = []
    for n in (int(v) for v in args.lengths.split(",")):
        zn = _latents(space, n, h, w, device)
        parallel = measure_peak_bytes(lambda zn=zn: ours(zn), device)[0] if n <= args.parallel_max else None
        streamed, _ = measure_peak_bytes(lambda zn=zn: _streamed(ours, zn), device)
        sweep.append({"frames": n, "parallel_mib": parallel and parallel / 2**20, "streaming_mib": streamed / 2**20})
        print(f"# {sweep[-1]}", file=sys.stderr, flush=True)
    result = {"device": str(device), "threads": torch.get_num_threads(), "size": args.size, "decoders": rows,
              "streaming_vs_length": sweep}  # fmt: skip
    if "wan2.1-vae" in rows:
        teacher = rows["wan2.1-vae"]
        for row in rows.values():
            row["speedup_vs_wan"] = teacher["ms_median"] / row["ms_median"]
            row["memory_vs_wan"] = row["peak_mib"] / teacher["peak_mib"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.size} on {device} ({torch.get_num_threads()} threads), random weights, {args.runs} runs")
    for name, row in rows.items():
        extra = f"  {row['speedup_vs_wan']:.1f}x faster" if "speedup_vs_wan" in row else ""
        print(f"{name:22s} {row['ms_median']:10.0f} ms (spread {row['ms_spread']:.0f})  peak {row['peak_mib']:8.1f} MiB"
              f"{extra}")  # fmt: skip
    for row in sweep:
        parallel = "-" if row["parallel_mib"] is None else f"{row['parallel_mib']:.1f} MiB"
        print(f"{row['frames']:4d} frames: parallel {parallel}, streaming {row['streaming_mib']:6.1f} MiB")


if __name__ == "__main__":
    main()
