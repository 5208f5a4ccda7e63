"""Planning a bounded-memory decode: the ``TileReport`` (how it is split, what it should cost), the estimate of a
plan's peak memory from the probe, the choice of the largest plan that fits a budget, and halving after an OOM."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.models.protocol import TileJob
from fastdecoders.tiling.memory import AUTO_BUDGET_FRACTION, memory_budget, probe

#: default context (latent pixels per side) for blended tiles of decoders with an unbounded receptive field.
BLEND_OVERLAP = 8


@dataclass
class TileReport:
    """How a decode was split, and what it was estimated to cost. Sizes are latent pixels; memory is bytes."""

    #: "whole" (one call), "exact" (cropped tiles / chunks, equal to untiled) or "blend" (cross-faded tiles).
    mode: str
    #: core side of a spatial tile (None: the whole latent), and context per side.
    tile: int | None
    overlap: int
    #: samples (image decoders), frames (tae-temporal rendering) or clips decoded together.
    batch_chunk: int
    #: latent frames pushed at once (taehv), None for other decoders.
    frames_per_chunk: int | None
    #: decoder calls (or stream pushes) made.
    pieces: int = 0
    receptive_field: int | None = None
    exact: bool = True
    note: str = ""
    budget_bytes: int | None = None
    bytes_per_latent_pixel: float | None = None
    estimated_peak_bytes: int | None = None
    estimated_untiled_bytes: int | None = None
    #: whether the estimate fits the budget (False: the smallest plan was used anyway; OOM retries may follow).
    fits: bool = True
    retries: int = 0
    tiles_per_image: int = 1
    #: bytes of the decoded output itself, which every plan holds whole (None: not measured).
    output_bytes: int | None = None
    #: what happened while decoding (out-of-memory retries).
    events: list[str] = field(default_factory=list)

    @property
    def estimated_saved_bytes(self) -> int | None:
        if self.estimated_peak_bytes is None or self.estimated_untiled_bytes is None:
            return None
        return self.estimated_untiled_bytes - self.estimated_peak_bytes

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``estimated_saved_bytes``."""
        return {**asdict(self), "estimated_saved_bytes": self.estimated_saved_bytes}


def spans(size: int, tile: int | None) -> list[tuple[int, int]]:
    """Balanced cores [a, b) of at most ``tile`` covering 0..size (one core when tile is None or >= size)."""
    if tile is None or tile >= size:
        return [(0, size)]
    n = math.ceil(size / tile)
    return [(i * size // n, (i + 1) * size // n) for i in range(n)]


def _piece_side(size: int, tile: int | None, overlap: int) -> int:
    """The largest decoded window along one axis: core plus context on both sides, clipped to the latent."""
    cores = spans(size, tile)
    return max(min(size, b + overlap) - max(0, a - overlap) for a, b in cores)


def _estimate(job: TileJob, bpl: float, out_per_px: float, batch: int, frames: int | None, tile: int | None,
              overlap: int, elt: int) -> int:  # fmt: skip
    x = job.inputs
    h, w = x.shape[-2:]
    n_frames = x.shape[2] if x.ndim == 5 else 1
    out_bytes = out_per_px * x.shape[0] * n_frames * h * w * elt
    if tile is not None and tile < max(h, w) and not (job.radius is not None and overlap >= job.radius):
        out_bytes *= 1 + 4 / elt  # blending: a float32 weight map per output pixel, at most
    piece_frames = (frames or n_frames) if job.kind == "causal" else n_frames
    piece = bpl * batch * piece_frames * _piece_side(h, tile, overlap) * _piece_side(w, tile, overlap)
    if tile is None and batch == x.shape[0] and (job.kind != "causal" or frames is None or frames >= n_frames):
        return int(bpl * x.shape[0] * n_frames * h * w + job.fixed_bytes)  # one call: its output is in the probe
    return int(piece + out_bytes + job.fixed_bytes)


def _default_overlap(job: TileJob, tile: int | None) -> int:
    if job.radius is not None:
        return job.radius
    return BLEND_OVERLAP if tile is None else min(BLEND_OVERLAP, max(1, tile // 4))


def make_plan(decoder: torch.nn.Module, job: TileJob, tile: int | str | None, overlap: int | None,
          max_memory_bytes: int | None, frames_per_chunk: int | None) -> TileReport:  # fmt: skip
    x = job.inputs
    h, w = x.shape[-2:]
    n, t = x.shape[0], (x.shape[2] if job.kind == "causal" else None)
    report = TileReport(mode="whole", tile=None, overlap=0, batch_chunk=n, frames_per_chunk=t,
                        receptive_field=job.radius, note=job.note)  # fmt: skip
    if frames_per_chunk is not None:
        if job.kind != "causal":
            name = type(decoder).__name__
            raise FastDecodersError(f"frames_per_chunk: expected a causal video (taehv) decoder, got {name}")
        if frames_per_chunk < 1:
            raise FastDecodersError(f"frames_per_chunk: expected >= 1, got {frames_per_chunk}")
    if tile == "off":
        return report
    elt = x.element_size()
    if isinstance(tile, bool) or not (tile in (None, "auto") or (isinstance(tile, int) and tile >= 1)):
        raise FastDecodersError(f"tile: expected a positive number of latent pixels, 'auto' or 'off', got {tile!r}")
    if max_memory_bytes is None:
        budget = int(AUTO_BUDGET_FRACTION.get(x.device.type, 0.5) * memory_budget(x.device))
    else:
        budget = int(max_memory_bytes)
    if tile in (None, "auto") and frames_per_chunk is None:  # a cheap upper estimate first: enough if one call fits
        bpl, out_per_px = probe(decoder, job, precise=False)
        untiled = _estimate(job, bpl, out_per_px, n, None, None, 0, elt)
        if untiled <= budget:
            return replace(report, budget_bytes=budget, bytes_per_latent_pixel=bpl, estimated_peak_bytes=untiled,
                           estimated_untiled_bytes=untiled)  # fmt: skip
    bpl, out_per_px = probe(decoder, job)
    report.budget_bytes, report.bytes_per_latent_pixel = budget, bpl
    report.output_bytes = int(out_per_px * n * (x.shape[2] if x.ndim == 5 else 1) * h * w * elt)
    report.estimated_untiled_bytes = _estimate(job, bpl, out_per_px, n, None, None, 0, elt)

    def finish(batch: int, frames: int | None, core: int | None, fits: bool) -> TileReport:
        core = None if core is not None and core >= max(h, w) else core
        ov = (_default_overlap(job, core) if overlap is None else overlap) if core is not None else 0
        exact = core is None or (job.radius is not None and ov >= job.radius)
        tiles = len(spans(h, core)) * len(spans(w, core))
        whole = core is None and batch == n and (frames is None or frames >= (t or 0))
        mode = "whole" if whole else ("exact" if exact else "blend")
        note = job.note if not exact else ""
        if core is not None and not exact and job.radius is not None:
            note = f"overlap {ov} < receptive field {job.radius}: blended, not exact"
        return replace(report, mode=mode, tile=core, overlap=ov, batch_chunk=batch, frames_per_chunk=frames,
                       exact=exact, note=note, fits=fits, tiles_per_image=tiles,
                       estimated_peak_bytes=_estimate(job, bpl, out_per_px, batch, frames, core, ov, elt))  # fmt: skip

    if isinstance(tile, int):
        plan = finish(n, frames_per_chunk or t, tile, True)
        return replace(plan, fits=plan.estimated_peak_bytes <= budget)

    # largest first: the whole batch, then fewer samples, then fewer frames, then smaller tiles
    unit = job.batch_unit
    candidates: list[tuple[int, int | None, int | None]] = [(b, frames_per_chunk or t, None)
                                                            for b in range(n, 0, -unit)]  # fmt: skip
    if job.kind == "causal" and frames_per_chunk is None:
        candidates += [(unit, f, None) for f in range(t - 1, 0, -1)]
    candidates += [(unit, frames_per_chunk or (1 if t else None), c) for c in range(max(h, w) - 1, 0, -1)]
    for batch, frames, core in candidates:
        ov = (_default_overlap(job, core) if overlap is None else overlap) if core is not None else 0
        if _estimate(job, bpl, out_per_px, batch, frames, core, ov, elt) <= budget:
            return finish(batch, frames, core, True)
    return finish(*candidates[-1], False)


def halve(plan: TileReport, job: TileJob) -> TileReport | None:
    """A plan with half the piece (batch first, then frames, then tile), or None if nothing is left to halve."""
    h, w = job.inputs.shape[-2:]
    fresh = {"pieces": 0, "retries": plan.retries + 1, "mode": "exact" if plan.exact else "blend"}
    if plan.batch_chunk > job.batch_unit:
        batch = max(job.batch_unit, plan.batch_chunk // 2 // job.batch_unit * job.batch_unit)
        return replace(plan, batch_chunk=batch, **fresh)
    if plan.frames_per_chunk is not None and plan.frames_per_chunk > 1:
        return replace(plan, frames_per_chunk=plan.frames_per_chunk // 2, **fresh)
    current = plan.tile if plan.tile is not None else max(h, w)
    if current > 1:
        core = current // 2
        overlap = plan.overlap if plan.tile is not None else _default_overlap(job, core)
        exact = job.radius is not None and overlap >= job.radius
        fresh["mode"] = "exact" if exact else "blend"
        tiles = len(spans(h, core)) * len(spans(w, core))
        return replace(plan, tile=core, overlap=overlap, exact=exact, tiles_per_image=tiles, **fresh)
    return None
