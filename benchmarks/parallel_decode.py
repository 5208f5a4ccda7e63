"""Patch-parallel decode on CPU: time and peak activation memory per rank, 1 process vs N gloo processes.

    python benchmarks/parallel_decode.py --decoders sdxl-vae,taesdxl --latent 64 --world 2 --runs 3

Random weights (time and memory do not depend on their values), fp32, one torch thread per process (so N processes
use N cores). For each decoder: the plain single-process decode, then each applicable mode on ``--world`` processes
(spawned here, gloo on 127.0.0.1). Per rank: median wall time of ``--runs`` decodes after one warm-up (ranks start each
run together after a barrier; the time includes gathering the whole image on rank 0), and the peak bytes of tensors
alive during one decode (``fastdecoders.tiling.LiveBytes``; weights and inputs excluded), plus the max error of the
gathered image against the single-process one. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastdecoders.models import build_decoder
from fastdecoders.parallel import init_process_group, parallel_decode
from fastdecoders.tiling import measure_peak_bytes


def _decoder(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_decoder(name).eval()


def _latents(name: str, side: int) -> torch.Tensor:
    channels = _decoder(name).latent_channels
    return torch.randn((1, channels, side, side), generator=torch.Generator().manual_seed(1))


def _measure(fn, runs: int, sync) -> tuple[float, float, int]:
    """(median wall seconds and median CPU seconds of this process over ``runs`` calls after a warm-up, peak live
    bytes of one call). CPU time is what the decode costs this process whatever else the machine runs; wall time on a
    loaded machine mostly measures the scheduler."""
    with torch.inference_mode():
        fn()
        peak, _ = measure_peak_bytes(fn, torch.device("cpu"))
        wall, cpu = [], []
        for _ in range(runs):
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), peak


def _rank(rank: int, world: int, port: int, name: str, side: int, mode: str, runs: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    init_process_group("cpu", timeout_s=1800)
    decoder, z = _decoder(name), _latents(name, side)
    seconds, cpu, peak = _measure(lambda: parallel_decode(decoder, z, mode=mode, dst=0), runs, dist.barrier)
    with torch.inference_mode():
        image = parallel_decode(decoder, z, mode=mode, dst=0)
    # numpy, not a tensor: a tensor would travel as shared memory that dies with this process
    pixels = None if image is None else image.numpy()
    queue.put({"rank": rank, "seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak / 2**20, "image": pixels})
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoders", default="sdxl-vae,taesdxl")
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 -> 512² pixels at f8)")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.decoders.split(","):
        decoder, z = _decoder(name), _latents(name, args.latent)
        seconds, cpu, peak = _measure(lambda: decoder(z), args.runs, lambda: None)  # noqa: B023
        with torch.inference_mode():
            reference = decoder(z)
        rows.append({"decoder": name, "processes": 1, "mode": "single", "seconds": seconds, "cpu_seconds": cpu,
                     "peak_mib": peak / 2**20})  # fmt: skip
        modes = ["halo", "layers"] if decoder.receptive_field is not None else ["layers"]
        for mode in modes:
            context = mp.get_context("spawn")
            queue = context.Queue()
            port = _free_port()
            job = (args.world, port, name, args.latent, mode, args.runs, queue)
            procs = [context.Process(target=_rank, args=(r, *job)) for r in range(args.world)]
            for proc in procs:
                proc.start()
            results = sorted((queue.get() for _ in procs), key=lambda r: r["rank"])
            for proc in procs:
                proc.join()
            error = (torch.from_numpy(results[0].pop("image")) - reference).abs().max().item()
            for r in results[1:]:
                r.pop("image")
            rows.append({"decoder": name, "processes": args.world, "mode": mode, "max_abs_error": error,
                         "seconds": max(r["seconds"] for r in results),
                         "cpu_seconds": max(r["cpu_seconds"] for r in results), "per_rank": results})  # fmt: skip
    print(json.dumps({"latent": args.latent, "pixels": args.latent * 8, "threads_per_process": 1, "rows": rows},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
