"""CPU runtimes side by side, interleaved: one decode per backend per round, so a machine whose load changes during the
run slows every backend alike (``fastdecoders bench`` times backend after backend; on a shared machine the load can
change between them). Prints each backend's median over the rounds and its ratio to the fastest.

    python benchmarks/cpu_runtimes.py --decoder taesdxl --size 512 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch

from fastdecoders.fast import optimize
from fastdecoders.models import build_decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", default="taesdxl")
    parser.add_argument("--size", type=int, default=512, help="output side in pixels")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", default="eager,channels_last,compile,onnxruntime,openvino,auto")
    args = parser.parse_args()
    decoder = build_decoder(args.decoder).eval()  # random weights: decode time does not depend on their values
    shape = (1, decoder.latent_channels, args.size // 8, args.size // 8)
    z = torch.randn(shape)
    runners, notes = {}, {}
    for backend in args.backends.split(","):
        runners[backend] = optimize(copy.deepcopy(decoder), backend=backend, shape=shape)
        if backend == "auto":
            notes["auto"] = runners[backend].fastdecoders_backend
    with torch.inference_mode():
        for run in runners.values():  # warm-up: oneDNN primitives, compile, ORT/OpenVINO arenas
            run(z)
            run(z)
        times: dict[str, list[float]] = {b: [] for b in runners}
        for _ in range(args.rounds):
            for backend, run in runners.items():
                start = time.perf_counter()
                run(z)
                times[backend].append((time.perf_counter() - start) * 1e3)
    medians = {b: statistics.median(t) for b, t in times.items()}
    best = min(medians.values())
    result = {
        "decoder": args.decoder, "shape": list(shape), "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(), "auto_chose": notes.get("auto"),
        "ms_median": medians, "ratio_to_fastest": {b: m / best for b, m in medians.items()},
    }  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
