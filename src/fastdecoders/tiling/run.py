"""Running a planned decode: pieces (batch chunks, spatial tiles with context, streamed frame chunks) assembled
into the output, exact crops or cross-faded blends, with halving on out-of-memory; and the public entry points."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import format_bytes
from fastdecoders.models.protocol import TileJob
from fastdecoders.tiling.memory import is_oom
from fastdecoders.tiling.plan import TileReport, halve, make_plan, spans


def _job(decoder: torch.nn.Module, z: torch.Tensor, num_frames: int | None) -> TileJob:
    """The decoder's own answer (``tile_job``, the protocol's tiling hook) to what to cut up for these latents."""
    if z.ndim not in (4, 5):
        raise FastDecodersError(f"tiling: expected latents (N, C, h, w) or (N, C, t, h, w), got {tuple(z.shape)}")
    return decoder.tile_job(z, num_frames)


def _causal_chunks(
    stream: Callable[[int], Any], z: torch.Tensor, frames_per_chunk: int
) -> Iterator[tuple[torch.Tensor, slice]]:
    """(pixel frames, their slice along T) for each chunk of ``frames_per_chunk`` latent frames of one clip."""
    state, start = stream(z.shape[2]), 0  # the clip's length: CogVideoX's rule needs it
    for t0 in range(0, z.shape[2], frames_per_chunk):
        pixels = state.push(z[:, :, t0 : t0 + frames_per_chunk])
        yield pixels, slice(start, start + pixels.shape[2])
        start += pixels.shape[2]
    state.flush()


def stream_decode(decoder: torch.nn.Module, latents: torch.Tensor, frames_per_chunk: int = 1) -> Iterator[torch.Tensor]:
    """Yield (B, 3, n, f·h, f·w) pixel frames of a causal decoder's clip chunk by chunk: constant memory in clip length.

    ``torch.cat(list(stream_decode(d, z, k)), dim=2)`` equals ``d(z)`` (fp32: within 1e-5) for any k >= 1.
    """
    if frames_per_chunk < 1:
        raise FastDecodersError(f"frames_per_chunk: expected >= 1, got {frames_per_chunk}")
    decoder.check_latents(latents)
    for pixels, _ in _causal_chunks(lambda t: decoder.stream(latent_frames=t), latents, frames_per_chunk):
        yield pixels


def _ramp(length: int, margin_before: int, margin_after: int) -> torch.Tensor:
    """Blend weights along one axis of a piece: rising over 2·margin_before, falling over 2·margin_after, else 1."""
    u = torch.arange(length, dtype=torch.float32) + 0.5
    w = torch.ones(length)
    if margin_before:
        w = torch.minimum(w, u / (2 * margin_before))
    if margin_after:
        w = torch.minimum(w, (length - u) / (2 * margin_after))
    return w


def _run(job: TileJob, plan: TileReport) -> torch.Tensor:
    """``job.fn`` over the pieces ``plan`` cuts ``job.inputs`` into (batch chunks x spatial tiles x, for causal
    decoders, streamed frame chunks), assembled into one output: exact cores, or cross-faded blends."""
    x = job.inputs
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    if plan.mode == "whole":
        plan.pieces = 1
        return job.fn(x)
    blend = not plan.exact
    ys, xs = spans(h, plan.tile), spans(w, plan.tile)
    ov = plan.overlap if plan.tile is not None else 0
    out: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    f = 0
    for b0 in range(0, n, plan.batch_chunk):
        batch = slice(b0, min(n, b0 + plan.batch_chunk))
        for y0, y1 in ys:
            for x0, x1 in xs:
                iy0, iy1, ix0, ix1 = max(0, y0 - ov), min(h, y1 + ov), max(0, x0 - ov), min(w, x1 + ov)
                piece_in = x[batch, ..., iy0:iy1, ix0:ix1]
                if job.kind == "causal":
                    chunks = _causal_chunks(job.stream, piece_in, plan.frames_per_chunk or x.shape[2])
                else:
                    chunks = iter([(job.fn(piece_in), None)])
                for piece, frames in chunks:
                    plan.pieces += 1
                    if out is None:
                        f = piece.shape[-1] // (ix1 - ix0)
                        shape = list(piece.shape[:-2]) + [f * h, f * w]
                        shape[0] = n
                        if job.kind == "causal":
                            shape[2] = job.pixel_frames(x.shape[2])
                        out = piece.new_zeros(shape) if blend else piece.new_empty(shape)
                        weights = torch.zeros(f * h, f * w, device=piece.device) if blend else None
                    lead = (batch,) + (slice(None),) * (piece.ndim - 3)
                    if frames is not None:
                        lead = lead[:2] + (frames,)
                    if blend:
                        wy = _ramp(f * (iy1 - iy0), f * ov * (iy0 > 0), f * ov * (iy1 < h))
                        wx = _ramp(f * (ix1 - ix0), f * ov * (ix0 > 0), f * ov * (ix1 < w))
                        wmap = (wy[:, None] * wx[None, :]).to(piece.device)
                        out[(*lead, slice(f * iy0, f * iy1), slice(f * ix0, f * ix1))] += piece * wmap.to(piece.dtype)
                        if b0 == 0 and (frames is None or frames.start == 0):
                            weights[f * iy0 : f * iy1, f * ix0 : f * ix1] += wmap
                    else:
                        core = piece[..., f * (y0 - iy0) : f * (y1 - iy0), f * (x0 - ix0) : f * (x1 - ix0)]
                        out[(*lead, slice(f * y0, f * y1), slice(f * x0, f * x1))] = core
                    del piece
    assert out is not None
    if blend:
        out /= weights.to(out.dtype)
    return out


def _finish(job: TileJob, out: torch.Tensor) -> torch.Tensor:
    """The assembled output in the caller's layout (the decoder's ``TileJob.finish``, e.g. frames -> clips)."""
    return out if job.finish is None else job.finish(out)


def auto_tile(decoder: torch.nn.Module, latents: torch.Tensor, max_memory_bytes: int | None = None,
              overlap: int | None = None, num_frames: int | None = None) -> TileReport:  # fmt: skip
    """The plan ``decode_tiled(..., tile="auto")`` would use for these latents (decodes only a small probe)."""
    return make_plan(decoder, _job(decoder, latents, num_frames), "auto", overlap, max_memory_bytes, None)


def decode_tiled(
    decoder: torch.nn.Module,
    latents: torch.Tensor,
    tile: int | str | None = None,
    overlap: int | None = None,
    max_memory_bytes: int | None = None,
    num_frames: int | None = None,
    frames_per_chunk: int | None = None,
) -> tuple[torch.Tensor, TileReport]:
    """Decode in pieces that fit memory; returns (RGB like ``decoder.decode_latents(latents, num_frames)``, a
    ``TileReport``). Runs under no_grad.

    Args:
        latents: diffusion-space latents as ``decoder.decode_latents`` takes them: frames (N, C, h, w) (clips of
            ``num_frames`` for tae-temporal / SVD) or NCTHW clips (N, C, t, h, w).
        tile: core side of a spatial tile in latent pixels; None or "auto" chooses from the memory estimate (and may
            chunk only the batch or frames), "off" is one plain call.
        overlap: latent pixels of context per side; default the receptive field (exact) or ``BLEND_OVERLAP``.
        max_memory_bytes: budget for the estimated peak; default 80% of free CUDA memory, 50% of available RAM.
        frames_per_chunk: latent frames pushed at once through a taehv stream (default: from the budget).

    Returns:
        RGB in about [-1, 1] shaped as ``decode_latents``' output; report.exact says whether it equals it to rounding.

    Raises:
        FastDecodersError: with ``tile`` None/"auto", when the decoded pixels alone exceed the budget (no tiling
            can help: the output is held whole), before anything is decoded.
    """
    job = _job(decoder, latents, num_frames)
    plan = make_plan(decoder, job, tile, overlap, max_memory_bytes, frames_per_chunk)
    if tile in (None, "auto") and not plan.fits and (plan.output_bytes or 0) > (plan.budget_bytes or 0):
        raise FastDecodersError(
            f"latents of shape {tuple(latents.shape)} decode to {format_bytes(plan.output_bytes)} of pixels, more "
            f"than the {format_bytes(plan.budget_bytes)} memory budget; tiles cannot help (the output is held whole): "
            f"decode fewer or smaller latents, or raise the budget (--max-memory-mb)"
        )
    with torch.no_grad():
        while True:
            try:
                return _finish(job, _run(job, plan)), plan
            except (RuntimeError, MemoryError) as error:
                if not (isinstance(error, MemoryError) or is_oom(error)):
                    raise
                smaller = halve(plan, job)
                if smaller is None:
                    raise
                plan = smaller
                plan.events.append(f"out of memory; retried with batch {plan.batch_chunk}, tile {plan.tile}, "
                                  f"frames {plan.frames_per_chunk}")  # fmt: skip
                if latents.device.type == "cuda":
                    torch.cuda.empty_cache()


def compare_tiled(decoder: torch.nn.Module, latents: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
    """Decode tiled and untiled; {"max_abs_diff", "mean_abs_diff", "report"}: the error tiling adds (tests, bench)."""
    tiled, report = decode_tiled(decoder, latents, **kwargs)
    num_frames = kwargs.get("num_frames")
    with torch.no_grad():
        whole = decoder.decode_latents(latents, num_frames)
    diff = (tiled.float() - whole.float()).abs()
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "report": report.as_dict()}


def parse_tile(value: str) -> int | str:
    """CLI ``--tile`` value: "auto", "off" or a positive int (latent pixels)."""
    if value in ("auto", "off"):
        return value
    try:
        tile = int(value)
    except ValueError:
        tile = 0
    if tile < 1:
        raise FastDecodersError(f"--tile: expected auto, off or a positive number of latent pixels, got {value!r}")
    return tile
