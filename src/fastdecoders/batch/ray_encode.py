"""The Ray engine of an encode job: a Ray Data pipeline read -> ``map_batches`` with a fixed pool of encoder actors
-> the driver, which assembles and writes the shards.

Rows are the job's units (``encoding.EncodeUnit``: one batch of consecutive sources of one chunk). The read stage
loads and resizes the unit's pictures (an unreadable one becomes its item's error), each encoder actor encodes
exactly one unit per call (``batch_size=1`` row) with ``encoding.encode_loaded``, so the encoder calls, and
therefore the shards, are those of the embedded engine. A shard gathers several units, so the driver writes it
(atomically) once its last unit is back; latents are small next to the pictures (1/48 of the float pixels for an
8x, 4-channel space). Tensors travel as .npz bytes. Ray Data restarts a dead actor and retries its batch (actor
defaults ``max_restarts=-1``, ``max_task_retries=-1``).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fastdecoders.batch.encoding import Encoded, EncodeUnit, encode_loaded, load_source
from fastdecoders.batch.ray_engine import actor_threads, io_pool, ray_cluster
from fastdecoders.train.teachers import load_teacher


def _pack(arrays: dict[str, np.ndarray | torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in arrays.items()})
    return buffer.getvalue()


def _unpack(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _read(row: dict, size: int | None, factor: int, frames: int) -> dict:
    unit = EncodeUnit.from_row(json.loads(row["unit"]))
    loaded = [load_source(s, size, factor, frames) for s in unit.sources]
    return {"unit": row["unit"], "pixels": _pack({str(i): x for i, x in enumerate(loaded) if not isinstance(x, str)}),
            "errors": json.dumps([x if isinstance(x, str) else None for x in loaded])}  # fmt: skip


class _EncodeActor:
    """One encoder per actor; ``__call__`` gets one unit (a one-row batch) and returns its items' tensors."""

    def __init__(self, cfg, device: str, threads: int | None, keep_pixels: bool, fault_exit_once: str | None):
        if threads is not None:
            torch.set_num_threads(threads)
        self.teacher = load_teacher(cfg, torch.device(device))
        self.keep_pixels, self.fault, self.calls = keep_pixels, fault_exit_once, 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        self.calls += 1
        if self.fault and self.calls == 2 and not os.path.exists(self.fault):
            Path(self.fault).write_text(str(os.getpid()))
            os._exit(1)  # a worker dying mid-job (tests): Ray restarts the actor and retries this batch
        errors = json.loads(str(batch["errors"][0]))
        arrays = _unpack(batch["pixels"][0])
        loaded = [e if e is not None else torch.from_numpy(arrays[str(i)]) for i, e in enumerate(errors)]
        results = encode_loaded(self.teacher, loaded, self.keep_pixels)
        tensors = {f"{i}.{name}": t for i, r in enumerate(results) if r.tensors for name, t in r.tensors.items()}
        return {"unit": [str(batch["unit"][0])], "tensors": [_pack(tensors)],
                "errors": [json.dumps([r.error for r in results])],
                "seconds": [json.dumps([r.seconds for r in results])]}  # fmt: skip


def run_ray_encode(job, units: list[EncodeUnit], cfg, factor: int, frames: int,
                   finish: Callable[[EncodeUnit, list[Encoded]], None]) -> None:  # fmt: skip
    """Encode ``units`` of ``job`` (an ``EncodeJob``) on Ray (``ray_engine.ray_cluster``); each unit's outcomes go
    to ``finish`` on the driver as they stream in (in any order)."""
    with ray_cluster(job) as ray:
        device = "cuda" if job.gpus_per_worker > 0 else job.device
        ds = ray.data.from_items([{"unit": json.dumps(u.as_row())} for u in units], override_num_blocks=len(units))
        ds = ds.map(_read, num_cpus=0, compute=io_pool(ray, job.workers),
                    fn_kwargs={"size": job.size, "factor": factor, "frames": frames})  # fmt: skip
        ds = ds.map_batches(_EncodeActor, batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=job.workers), num_cpus=job.cpus_per_worker,
                            num_gpus=job.gpus_per_worker or None,
                            fn_constructor_kwargs={"cfg": cfg, "device": device, "threads": actor_threads(job),
                                                   "keep_pixels": job.pixels,
                                                   "fault_exit_once": job.fault_exit_once})  # fmt: skip
        for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
            unit = EncodeUnit.from_row(json.loads(str(batch["unit"][0])))
            errors, seconds = json.loads(str(batch["errors"][0])), json.loads(str(batch["seconds"][0]))
            arrays = _unpack(batch["tensors"][0])
            results = []
            for i, (error, s) in enumerate(zip(errors, seconds, strict=True)):
                if error is not None:
                    results.append(Encoded(None, error, s))
                    continue
                names = [k.split(".", 1)[1] for k in arrays if k.split(".", 1)[0] == str(i)]
                results.append(Encoded({n: torch.from_numpy(arrays[f"{i}.{n}"]) for n in names}, None, s))
            finish(unit, results)
