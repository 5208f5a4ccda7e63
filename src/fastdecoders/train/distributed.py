"""Processes of a training run: join torchrun's process group, the few collectives the loop needs, and one clear
error line when another process dies (instead of a gloo/NCCL traceback).

Under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the environment) every process runs the same
loop; NCCL on GPUs, gloo on CPUs. Without it the run is one process and every helper here is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from fastdecoders.errors import FastDecodersError


@dataclass
class Dist:
    """This process: its rank, the number of processes and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the process group that torchrun describes, if any; ``device`` is ``train.device`` (auto: this
    process's GPU under torchrun, else the CPU)."""
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and world > 1:
        device = f"cuda:{local}"
    dev = torch.device(device)
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise FastDecodersError(f"train.device {device}: no such CUDA device here "
                                f"({torch.cuda.device_count()} visible)")  # fmt: skip
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        # the cache is built by process 0 while the others wait: allow it time
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return Dist(dist.get_rank() if world > 1 else 0, world, dev)


def close(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def any_process(d: Dist, flag: bool) -> bool:
    """True on every process if ``flag`` is true on any (so that all stop at the same step)."""
    if d.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def check_in_sync(module: nn.Module, d: Dist) -> None:
    """All processes must hold bit-identical weights; a per-process checksum is compared across them."""
    if d.world == 1:
        return
    with torch.no_grad():
        sums = torch.stack([torch.stack([p.double().sum(), p.double().pow(2).sum()]) for p in module.parameters()])
    gathered = [torch.empty_like(sums) for _ in range(d.world)]
    dist.all_gather(gathered, sums)
    if not all(torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("distributed training: the processes' weights have diverged")


def all_reduce_grads(module: nn.Module, d: Dist) -> None:
    """Average ``module``'s gradients over the processes (for parameters that DDP does not wrap)."""
    if d.world == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= d.world


#: what gloo and NCCL say when the process at the other end of a collective is gone
_PEER_GONE = ("closed by peer", "reset by peer", "broken pipe", "connection refused", "nccl error", "watchdog",
              "timed out", "socket")  # fmt: skip


def peer_gone(error: BaseException) -> bool:
    """Is ``error`` a collective that failed because another process died or stopped answering?"""
    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(s in text for s in _PEER_GONE)


@contextlib.contextmanager
def lost_peers_are_one_line(d: Dist, last_checkpoint: Callable[[], Path | None]) -> Iterator[None]:
    """Turn a collective that fails because another process died into one ``FastDecodersError`` line saying what
    to do (torchrun names the process that died first); every other error passes through unchanged.
    ``last_checkpoint()``: the checkpoint a restart would resume from (None: none yet)."""
    try:
        yield
    except (RuntimeError, dist.DistError) as e:
        if d.world == 1 or not peer_gone(e):
            raise
        # the first sentence of the first line; gloo prefixes a source path ("[../gloo/transport/tcp/pair.cc:534] ")
        reason = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip().splitlines()[0]).split(". ")[0][:160]
        found = last_checkpoint()
        resume = (f"restart every process with --resume to continue from {found}" if found
                  else "no checkpoint was written yet: restart the run")  # fmt: skip
        raise FastDecodersError(f"distributed training: process {d.rank} of {d.world} lost contact with another "
                                f"process ({reason}); it died or was killed (its own log and torchrun say which); "
                                f"{resume}") from None  # fmt: skip
