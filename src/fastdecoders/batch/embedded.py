"""The embedded engine: one process, the decoder on the calling thread, I/O on background threads.

A reader thread loads the next units' latents (a bounded queue, ``prefetch`` deep) while the decoder runs; a pool of
writer threads turns the previous batches into files. The decoder never waits for the disk unless the writers fall
``prefetch`` batches behind (then it blocks, which bounds memory).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from fastdecoders.batch.plan import Unit, read_unit
from fastdecoders.batch.worker import Decoded, DecodeWorker
from fastdecoders.errors import FastDecodersError

_DONE = object()


def run_embedded(units: list[Unit], worker: DecodeWorker, write: Callable[[Unit, Decoded], list[dict]],
                 record: Callable[[list[dict]], None], prefetch: int = 2, writers: int = 2) -> None:  # fmt: skip
    """Decode ``units`` in order; ``write(unit, decoded)`` (on a writer thread) returns the unit's manifest rows,
    which go to ``record`` (called from one thread at a time)."""
    loaded: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def reader() -> None:
        for unit in units:
            if stop.is_set():
                return
            try:
                item = (unit, read_unit(unit), None)
            except FastDecodersError as e:  # a shard that cannot be read: its items fail, the job goes on
                item = (unit, None, str(e))
            loaded.put(item)
        loaded.put(_DONE)

    lock = threading.Lock()
    in_flight = threading.Semaphore(prefetch + writers)
    thread = threading.Thread(target=reader, name="fastdecoders-reader", daemon=True)
    thread.start()
    pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="fastdecoders-writer")
    futures: list[Future] = []

    def finish(unit: Unit, decoded: Decoded) -> None:
        try:
            rows = write(unit, decoded)
            with lock:
                record(rows)
        finally:
            in_flight.release()

    try:
        while (item := loaded.get()) is not _DONE:
            unit, latents, error = item
            if error is not None:
                decoded = Decoded([None] * len(unit.ids), [error] * len(unit.ids), 0.0)
            else:
                decoded = worker.decode(latents)
            in_flight.acquire()  # at most prefetch + writers batches of images wait for the disk
            futures.append(pool.submit(finish, unit, decoded))
            _raise_finished(futures)
        for f in futures:
            f.result()  # re-raises a writer's unexpected error here
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue
            try:
                loaded.get(timeout=0.05)
            except queue.Empty:
                pass
        pool.shutdown(wait=True)


def _raise_finished(futures: list[Future]) -> None:
    """Drop finished writes from ``futures``, re-raising the first unexpected writer error here."""
    for f in [f for f in futures if f.done()]:
        futures.remove(f)
        f.result()


def bare_throughput(units: list[Unit], worker: DecodeWorker) -> tuple[int, float]:
    """The bare decoder loop over the same batches (latents read beforehand, nothing written): (items, seconds)."""
    latents = [read_unit(u) for u in units]
    start = time.perf_counter()
    for z in latents:
        worker.decode(z)
    return sum(len(z) for z in latents), time.perf_counter() - start
