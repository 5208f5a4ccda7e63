"""The Ray Data engine: read -> decode (an actor pool of decoders) -> write, streamed; the driver records rows.

Rows are units (one batch each, see ``plan``): the read stage adds the unit's latents, each decoder actor decodes
exactly one unit per call (``batch_size=1`` row), so the batches, and therefore the outputs, are those of the
embedded engine. Tensors travel as .npy bytes. Ray Data restarts a dead actor and retries its batch (its defaults
for actors: ``max_restarts=-1``, ``max_task_retries=-1``); writes are atomic and per item, so a retried batch
overwrites its own files with the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from fastdecoders.batch.plan import Unit, from_bytes, read_unit, to_bytes
from fastdecoders.batch.worker import Decoded, DecoderArgs, DecodeWorker
from fastdecoders.errors import FastDecodersError


def import_ray():
    """``ray`` with Ray Data, or the one-line error (the CLI exits 2)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise FastDecodersError("--engine ray needs Ray Data: pip install 'fastdecoders[scale]'") from None
    return ray


def _read(row: dict) -> dict:
    unit = Unit.from_row(json.loads(row["unit"]))
    try:
        latents = read_unit(unit)
        if latents.dtype == torch.bfloat16:  # numpy has no bfloat16; fp32 holds it exactly
            latents = latents.float()
        return {"unit": row["unit"], "latents": to_bytes(latents), "error": ""}
    except FastDecodersError as e:
        return {"unit": row["unit"], "latents": b"", "error": str(e)}


class _DecodeActor:
    """One decoder per actor; ``__call__`` gets one unit (a one-row batch) and returns its decoded items."""

    def __init__(self, args: DecoderArgs, fault_exit_once: str | None = None):
        self.worker = DecodeWorker(args)
        self.fault, self.calls = fault_exit_once, 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        self.calls += 1
        if self.fault and self.calls == 2 and not os.path.exists(self.fault):
            Path(self.fault).write_text(str(os.getpid()))
            os._exit(1)  # a worker dying mid-job (tests): Ray restarts the actor and retries this batch
        unit_text, error = str(batch["unit"][0]), str(batch["error"][0])
        n = len(json.loads(unit_text)["ids"])
        if error:
            decoded = Decoded([None] * n, [error] * n, 0.0)
        else:
            decoded = self.worker.decode(torch.from_numpy(from_bytes(batch["latents"][0])))
        ok = [a for a in decoded.arrays if a is not None]
        return {
            "unit": [unit_text],
            "arrays": [to_bytes(np.stack(ok)) if ok else b""],
            "errors": [json.dumps(decoded.errors)],
            "seconds": [decoded.seconds],
            "decoder": [self.worker.name],
        }


def _write(batch: dict[str, np.ndarray], write: Callable[[Unit, Decoded, str], list[dict]]) -> dict[str, list]:
    unit = Unit.from_row(json.loads(str(batch["unit"][0])))
    errors = json.loads(str(batch["errors"][0]))
    stacked = iter(from_bytes(batch["arrays"][0]) if batch["arrays"][0] else [])
    arrays = [next(stacked) if e is None else None for e in errors]
    decoded = Decoded(arrays, errors, float(batch["seconds"][0]))
    return {"rows": [json.dumps(write(unit, decoded, str(batch["decoder"][0])))]}


@contextmanager
def ray_cluster(job) -> Iterator:
    """``ray`` connected to a cluster: the one already initialised in this process, the one at ``job.address``, or
    a local one started here (``job.num_cpus`` CPUs, a ``job.object_store_mb`` object store) and stopped on exit.
    Ray Data's own progress bars are off (the job's tqdm bar counts items)."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        common = {"include_dashboard": False, "log_to_driver": False, "logging_level": "warning"}
        if job.address:
            try:
                ray.init(address=job.address, **common)
            except (ConnectionError, RuntimeError) as e:  # Ray's own is a long traceback after minutes of retries
                reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise FastDecodersError(f"--address {job.address}: could not join the Ray cluster ({reason})") from None
        else:
            # the CPUs this process may run on (a container's or taskset's share), not the host's count
            usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            cpus = job.num_cpus or usable
            ray.init(num_cpus=cpus, object_store_memory=job.object_store_mb * 2**20, **common)
        started = True
    try:
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # not "progress bars disabled" on every job
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield ray
    finally:
        if started:
            ray.shutdown()


def io_pool(ray, size: int):
    """The task pool of the read and write stages: at most ``size`` (>= 2) tasks at once. They reserve no CPU: the
    model actors may hold every CPU of the cluster (2 workers x 1 CPU on 2 cores), and reserved CPUs would leave
    none to schedule them (a stall); their pool is bounded instead."""
    return ray.data.TaskPoolStrategy(size=max(2, size))


def actor_threads(job) -> int | None:
    """Torch threads of a CPU actor: its CPUs (None on a GPU: torch's default)."""
    return max(1, int(job.cpus_per_worker)) if job.gpus_per_worker == 0 else None


def run_ray(job, units: list[Unit], write: Callable[[Unit, Decoded, str], list[dict]],
            record: Callable[[list[dict]], None]) -> None:  # fmt: skip
    """Run ``units`` of ``job`` (a ``DecodeJob``) on Ray (``ray_cluster``); ``write(unit, decoded, decoder name)``
    runs in the write stage and returns the unit's manifest rows, which go to ``record`` on the driver."""
    with ray_cluster(job) as ray:
        args = DecoderArgs(**{**job.decoder.__dict__, "threads": actor_threads(job),
                              "device": "cuda" if job.gpus_per_worker > 0 else job.decoder.device})  # fmt: skip
        ds = ray.data.from_items([{"unit": json.dumps(u.as_row())} for u in units], override_num_blocks=len(units))
        # write tasks are processes (no shared GIL): at 1024² a GPU decodes faster than ten cores write PNGs, so a
        # GPU job raises --writers (concurrent read and write tasks in the whole job) to its cores
        pool = io_pool(ray, max(job.workers, job.writers))
        ds = ds.map(_read, num_cpus=0, compute=pool)
        # a fixed pool of decoder actors; Ray Data gives actors max_restarts=-1 and max_task_retries=-1 by default,
        # so a dead actor is replaced and its batch retried
        ds = ds.map_batches(_DecodeActor, batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=job.workers), num_cpus=job.cpus_per_worker,
                            num_gpus=job.gpus_per_worker or None,
                            fn_constructor_kwargs={"args": args, "fault_exit_once": job.fault_exit_once})  # fmt: skip
        ds = ds.map_batches(_write, batch_size=1, batch_format="numpy", num_cpus=0, compute=pool,
                            fn_kwargs={"write": write})  # fmt: skip
        for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
            for text in batch["rows"]:
                record(json.loads(str(text)))
