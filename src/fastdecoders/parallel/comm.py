"""Row bands and the few collectives patch-parallel decoding needs, on any torch.distributed backend (gloo, NCCL).

A decode is split by **latent rows**: rank r owns rows ``[start(r), start(r) + rows[r])`` of the latent map, and every
activation of the decoder keeps that split scaled by its resolution (nearest upsampling doubles every band alike). So
any activation's local height is ``rows[rank] · scale`` and every rank can work out every other rank's height without
asking: uneven bands need no size exchange.

Communication errors (a peer that died, a timeout) become one ``FastDecodersError`` line naming this rank and the peer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fastdecoders.errors import FastDecodersError


def split_rows(height: int, world: int) -> tuple[int, ...]:
    """Latent rows per rank, as even as possible (the first ``height % world`` ranks get one more); each gets >= 1."""
    if world < 1 or height < world:
        raise FastDecodersError(f"patch-parallel decode: {height} latent rows cannot give each of {world} ranks a band")
    base, extra = divmod(height, world)
    return tuple(base + (r < extra) for r in range(world))


@dataclass
class Bands:
    """This rank's place in a row split: ``rows`` latent rows per rank of ``group`` (None: the default group)."""

    rows: tuple[int, ...]
    rank: int
    group: Any = None

    @property
    def world(self) -> int:
        return len(self.rows)

    def start(self, rank: int | None = None) -> int:
        return sum(self.rows[: self.rank if rank is None else rank])

    def scale(self, local_size: int) -> int:
        """Activation rows per latent row, from this rank's local height ``local_size``."""
        scale, rest = divmod(local_size, self.rows[self.rank])
        if rest:
            raise FastDecodersError(f"patch-parallel decode: a band of {local_size} rows is not a multiple of its "
                                    f"{self.rows[self.rank]} latent rows; this decoder resizes unevenly")  # fmt: skip
        return scale

    def peer(self, rank: int) -> int:
        """The global rank of group rank ``rank`` (what point-to-point calls take)."""
        return rank if self.group is None else dist.get_global_rank(self.group, rank)


def _guard(what: str, bands: Bands, fn: Callable[[], Any]) -> Any:
    """Run a collective; a dead peer or timeout surfaces as one line instead of a backend traceback."""
    try:
        return fn()
    except (RuntimeError, dist.DistError) as error:  # DistBackendError, DistNetworkError, gloo/NCCL timeouts
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FastDecodersError(f"patch-parallel decode: rank {bands.rank} of {bands.world} failed in {what} "
                                f"(a peer died or timed out): {first[:200]}") from None  # fmt: skip


def exchange_halo(
    x: torch.Tensor, before: int, after: int, dim: int, bands: Bands
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the last ``before`` rows of the previous band, the first ``after`` rows of the next band) along ``dim``; zeros
    where there is no neighbour (the image border), as a convolution's zero padding would see.

    Every band must hold at least ``max(before, after)`` rows at this resolution (checked identically on every rank, so
    all ranks raise together rather than one waiting on a peer that gave up).
    """
    dim = dim % x.ndim
    scale = bands.scale(x.shape[dim])
    smallest = min(bands.rows) * scale
    if smallest < max(before, after):
        raise FastDecodersError(f"patch-parallel decode: a layer needs {max(before, after)} rows from each neighbour, "
                                f"but the smallest band has {smallest}; use fewer ranks")  # fmt: skip
    r, last = bands.rank, bands.world - 1
    shape = list(x.shape)
    top = x.new_zeros(shape[:dim] + [before] + shape[dim + 1 :])
    bottom = x.new_zeros(shape[:dim] + [after] + shape[dim + 1 :])
    ops = []
    if r > 0:  # our first `after` rows are the previous band's bottom halo; its last `before` rows are our top halo
        if after:
            ops.append(dist.P2POp(dist.isend, x.narrow(dim, 0, after).contiguous(), bands.peer(r - 1), bands.group))
        if before:
            ops.append(dist.P2POp(dist.irecv, top, bands.peer(r - 1), bands.group))
    if r < last:
        if before:
            edge = x.narrow(dim, x.shape[dim] - before, before).contiguous()
            ops.append(dist.P2POp(dist.isend, edge, bands.peer(r + 1), bands.group))
        if after:
            ops.append(dist.P2POp(dist.irecv, bottom, bands.peer(r + 1), bands.group))
    if ops:
        _guard("a halo exchange", bands, lambda: [req.wait() for req in dist.batch_isend_irecv(ops)])
    return top, bottom


def all_reduce_sum(x: torch.Tensor, bands: Bands) -> torch.Tensor:
    """Sum of ``x`` over the ranks, in place."""
    if bands.world == 1:
        return x
    _guard("an all-reduce", bands, lambda: dist.all_reduce(x, group=bands.group))
    return x


def gather_bands(x: torch.Tensor, dim: int, bands: Bands, dst: int | None = None) -> torch.Tensor | None:
    """Concatenate every rank's band of ``x`` along ``dim`` (bands may differ in size: each is ``rows[r] · scale``).

    ``dst`` None: every rank gets the whole; else only group rank ``dst`` does and the others get None.
    """
    if bands.world == 1:
        return x
    dim = dim % x.ndim
    scale = bands.scale(x.shape[dim])
    sizes = [rows * scale for rows in bands.rows]
    pad = [0, 0] * (x.ndim - 1 - dim) + [0, max(sizes) - x.shape[dim]]
    padded = torch.nn.functional.pad(x, pad).contiguous()  # collectives need equal shapes
    if dst is None:
        parts = [torch.empty_like(padded) for _ in sizes]
        _guard("gathering the bands", bands, lambda: dist.all_gather(parts, padded, group=bands.group))
    else:
        parts = [torch.empty_like(padded) for _ in sizes] if bands.rank == dst else None
        _guard("gathering the bands", bands,
               lambda: dist.gather(padded, parts, dst=bands.peer(dst), group=bands.group))  # fmt: skip
        if parts is None:
            return None
    return torch.cat([part.narrow(dim, 0, size) for part, size in zip(parts, sizes, strict=True)], dim=dim)
