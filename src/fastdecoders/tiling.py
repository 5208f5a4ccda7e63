"""Bounded-memory decoding: spatial tiles for image decoders, frame chunks for video decoders, chosen from a budget.

``decode_tiled(decoder, z)`` returns the same RGB as ``decoder(z)`` (diffusion-space latents in, [-1, 1] out) while
keeping the activations of only one piece alive at a time:

* **exact tiles** when the decoder's ``receptive_field`` (latent pixels, see ``Decoder.receptive_field``) is known:
  each tile is decoded with ``overlap >= receptive_field`` latent pixels of context on every side that has a
  neighbour, and only its centre (the "core") is kept, so every kept pixel saw exactly the latents it sees untiled
  (fp32: equal to float rounding). The TAE family (19 latent pixels for TAESD's layout) and ResBlock-only EffViT are
  bounded. TAEF2's pooled GroupNorm normalises over the whole map, but only at latent size: those first blocks run
  once on the whole latent (cheap) and the rest, bounded again (18 latent pixels), is tiled exactly.
  EffViT attention and diffusers VAEs (mid-block attention, GroupNorm) are unbounded.
* **blended tiles** otherwise: pieces overlap by ``2·overlap`` latent pixels and are cross-faded linearly. Not exact;
  ``compare_tiled`` measures the error against the untiled decode.
* **batch chunks**: any decoder, exact (in eval mode).
* **frame chunks** for video: ``taehv`` streams latent frames through ``decoder.stream()`` (activations constant
  in clip length; ``stream_decode`` yields frames without holding the clip); ``tae-temporal`` mixes frames at latent
  size once (``temporal_features``) and renders frames in chunks (``render_frames``, frame-wise): both exact.

The automatic choice (``auto_tile``) first checks a cheap upper estimate (``ROUGH_FACTOR`` x the largest layer
output, from forward hooks on a small probe): if one call fits the budget, nothing is split. Otherwise it measures peak
activation bytes per latent pixel once per decoder, device and dtype on a 16x16 probe (CUDA: the allocator's peak;
elsewhere ``LiveBytes``, a count of live tensor storages) and picks the largest batch chunk, then frame chunk, then
tile whose estimated peak fits the budget (``max_memory_bytes``, or a fraction of free CUDA memory / available RAM).
An out-of-memory error while decoding halves the piece and retries, as a last resort. Estimates are per latent
pixel, so they are linear in area: right for convolutional decoders, optimistic for attention over all pixels.
"""

from __future__ import annotations

import inspect
import math
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fastdecoders.errors import FastDecodersError
from fastdecoders.models.layers import module_ops, receptive_radius, sequence_ops

#: side of the probe used to measure bytes per latent pixel (latent pixels; 16 -> 128² pixels at f8).
PROBE_SIZE = 16
#: fraction of free memory the automatic choice plans to use when no ``max_memory_bytes`` is given: CUDA estimates
#: come from the allocator itself; on CPU, process RSS ran 1.3-1.6x above the live-tensor estimate (allocator and
#: oneDNN scratch; benchmarks/README.md), hence the lower fraction.
AUTO_BUDGET_FRACTION = {"cuda": 0.8, "cpu": 0.5}
#: rough estimate = this x the largest leaf-module output (measured peaks: 3x for TAE/EffViT, 6.5x for a causal video
#: decoder).
ROUGH_FACTOR = 8
#: default context (latent pixels per side) for blended tiles of decoders with an unbounded receptive field.
BLEND_OVERLAP = 8


# -- memory measurement ---------------------------------------------------------------------------------------------


def is_oom(error: BaseException) -> bool:
    """True for out-of-memory errors: ``torch.OutOfMemoryError`` (CUDA), or a RuntimeError saying "out of memory" or
    (CPU allocator) "can't allocate memory"."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    message = str(error).lower()
    return isinstance(error, oom_type) or (
        isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)
    )


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of tensor storages created inside it and still alive; ``peak`` is the most at once.

    Device-independent (CPU, meta, MPS ...); storages allocated before entering (weights, inputs) are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[Any, int] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.multiprocessing.reductions import StorageWeakRef

        out = func(*args, **(kwargs or {}))
        for ref in [r for r in self.live if r.expired()]:
            self.current -= self.live.pop(ref)
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                ref = StorageWeakRef(tensor.untyped_storage())
                if ref not in self.live:
                    self.live[ref] = tensor.untyped_storage().nbytes()
                    self.current += self.live[ref]
        self.peak = max(self.peak, self.current)
        return out


def rough_peak_bytes(fn: Callable[[], Any], modules: torch.nn.Module) -> tuple[int, Any]:
    """(an upper estimate of the peak bytes of ``fn()``, its result): ``ROUGH_FACTOR`` x the largest output of any leaf
    module of ``modules``, plus the result. Cheap (forward hooks), unlike ``LiveBytes`` whose dispatch mode imports
    torch._dynamo (seconds, once per process)."""
    largest = [0]

    def record(module, args, out):
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    hooks = [m.register_forward_hook(record) for m in modules.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            result = fn()
    finally:
        for hook in hooks:
            hook.remove()
    return ROUGH_FACTOR * largest[0] + result.numel() * result.element_size(), result


def measure_peak_bytes(fn: Callable[[], Any], device: torch.device) -> tuple[int, Any]:
    """(peak bytes allocated while running ``fn()`` above what was allocated before, its result), under no_grad.

    CUDA: the caching allocator's peak; other devices: ``LiveBytes``.
    """
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            result = fn()
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - base, result
        tracker = LiveBytes()
        if "torch._dynamo" in sys.modules:  # something may be compiled: run eagerly, so the tracker sees every op
            fn = torch.compiler.disable(fn)  # (importing dynamo just for this would cost seconds)
        with tracker:
            result = fn()
        return tracker.peak, result


def memory_budget(device: torch.device | str) -> int:
    """Bytes a decode may use now: free CUDA memory plus PyTorch's cached free blocks, or available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    from fastdecoders.io import available_memory  # psutil is optional

    return available_memory()


#: per decoder: {(kind, device, dtype): (peak bytes per latent pixel, output elements per latent pixel)}
_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# -- plan and report ------------------------------------------------------------------------------------------------


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


# -- what to run: a decoder seen as a spatially local map, possibly over chunks -------------------------------------


@dataclass
class _Job:
    """The input actually tiled and the function mapping one piece of it to RGB."""

    kind: str  # "image" | "clips" | "temporal" | "causal"
    inputs: torch.Tensor  # (N, C, h, w) or (N, C, t, h, w)
    fn: Callable[[torch.Tensor], torch.Tensor]
    radius: int | None
    batch_unit: int = 1  # batch chunks are multiples of this (frames of one clip for num_frames decoders)
    fixed_bytes: int = 0  # memory held throughout besides the output (tae-temporal's features)
    note: str = ""


def _takes_num_frames(decoder: torch.nn.Module) -> bool:
    return "num_frames" in inspect.signature(decoder.forward).parameters


def _job(decoder: torch.nn.Module, z: torch.Tensor, num_frames: int | None) -> _Job:
    from fastdecoders.models.tae import TAEDecoder
    from fastdecoders.models.taehv import TAEHVDecoder
    from fastdecoders.models.temporal import TemporalTAEDecoder

    if z.ndim not in (4, 5):
        raise FastDecodersError(f"tiling: expected latents (N, C, h, w) or (N, C, t, h, w), got {tuple(z.shape)}")
    radius = getattr(decoder, "receptive_field", None)
    note = "" if radius is not None else f"{type(decoder).__name__} has no bounded receptive field"
    if isinstance(decoder, TemporalTAEDecoder):
        frames = z.shape[0] if num_frames is None else num_frames
        with torch.no_grad():
            features = decoder.temporal_features(z, frames)  # frames mix here, at latent size, once
        fixed = features.numel() * features.element_size()
        return _Job("temporal", features, decoder.render_frames, decoder.render_receptive_field, 1, fixed)
    if isinstance(decoder, TAEHVDecoder):
        decoder.check_latents(z)
        return _Job("causal", z, decoder, radius, note=note)
    if isinstance(decoder, TAEDecoder) and radius is None:
        split = _global_prefix(decoder)
        if split is not None:  # TAEF2: the pooled-GroupNorm blocks run once on the whole latent, the rest tiles
            layers = list(decoder.children())
            with torch.no_grad():
                features = z
                for layer in layers[:split]:
                    features = layer(features)

            def render(x: torch.Tensor) -> torch.Tensor:
                for layer in layers[split:]:
                    x = layer(x)
                return x.mul(2).sub(1)  # as TAEDecoder.forward

            tail = receptive_radius(sequence_ops(layers[split:]))
            fixed = features.numel() * features.element_size()
            return _Job("image", features, render, tail, fixed_bytes=fixed)
    if num_frames is not None and _takes_num_frames(decoder):
        if z.shape[0] % num_frames:
            raise FastDecodersError(f"tiling: expected a multiple of num_frames={num_frames} frames, got {z.shape[0]}")
        return _Job("clips", z, lambda x: decoder(x, num_frames=num_frames), radius, num_frames, note=note)
    return _Job("image", z, decoder, radius, note=note)


def _global_prefix(decoder: torch.nn.Module) -> int | None:
    """For a TAE with global layers (pooled GroupNorm) only at latent size: how many leading layers to run whole."""
    layers = list(decoder.children())
    unbounded = [i for i, layer in enumerate(layers) if module_ops(layer) is None]
    split = unbounded[-1] + 1
    if any(isinstance(layer, torch.nn.Upsample) for layer in layers[:split]):
        return None
    if sequence_ops(layers[split:]) is None:
        return None
    return split


def _causal_chunks(
    decoder: torch.nn.Module, z: torch.Tensor, frames_per_chunk: int
) -> Iterator[tuple[torch.Tensor, slice]]:
    """(pixel frames, their slice along T) for each chunk of ``frames_per_chunk`` latent frames of one clip."""
    stream, start = decoder.stream(latent_frames=z.shape[2]), 0  # the clip's length: CogVideoX's rule needs it
    for t0 in range(0, z.shape[2], frames_per_chunk):
        pixels = stream.push(z[:, :, t0 : t0 + frames_per_chunk])
        yield pixels, slice(start, start + pixels.shape[2])
        start += pixels.shape[2]
    stream.flush()


def stream_decode(decoder: torch.nn.Module, latents: torch.Tensor, frames_per_chunk: int = 1) -> Iterator[torch.Tensor]:
    """Yield (B, 3, n, f·h, f·w) pixel frames of a causal decoder's clip chunk by chunk: constant memory in clip length.

    ``torch.cat(list(stream_decode(d, z, k)), dim=2)`` equals ``d(z)`` (fp32: within 1e-5) for any k >= 1.
    """
    if frames_per_chunk < 1:
        raise FastDecodersError(f"frames_per_chunk: expected >= 1, got {frames_per_chunk}")
    decoder.check_latents(latents)
    for pixels, _ in _causal_chunks(decoder, latents, frames_per_chunk):
        yield pixels


def _probe(decoder: torch.nn.Module, job: _Job, precise: bool = True) -> tuple[float, float]:
    """(peak bytes, output elements) per latent pixel (per latent frame too for causal), measured once and cached.

    ``precise=False`` off CUDA gives ``rough_peak_bytes``' upper estimate instead of ``measure_peak_bytes``.
    """
    x = job.inputs
    precise = precise or x.device.type == "cuda"  # the allocator's peak costs nothing there
    measure = measure_peak_bytes if precise else lambda fn, device: rough_peak_bytes(fn, decoder)
    key = (job.kind, str(x.device), x.dtype, tuple(x.shape[1:-2]) if job.kind != "causal" else x.shape[1], precise)
    cache = _PROBES.setdefault(decoder, {})
    size = PROBE_SIZE
    while key not in cache:
        p = min(size, x.shape[-2]), min(size, x.shape[-1])
        batch = job.batch_unit
        try:
            if job.kind == "causal":
                frames = min(2, x.shape[2])
                probe = x[:1, :, :frames, : p[0], : p[1]].clone()
                peak, out = measure(lambda p=probe, n=frames: decoder.stream(latent_frames=n).push(p), x.device)
                pixels = frames * p[0] * p[1]
            else:
                probe = x[:batch, ..., : p[0], : p[1]].clone()
                peak, out = measure(lambda p=probe: job.fn(p), x.device)
                pixels = batch * p[0] * p[1] * (x.shape[2] if x.ndim == 5 else 1)
        except (RuntimeError, MemoryError) as error:
            if size == 1 or not (isinstance(error, MemoryError) or is_oom(error)):
                raise
            size //= 2  # even the probe did not fit: a smaller one
            continue
        cache[key] = (peak / pixels, out.numel() / pixels)
    return cache[key]


# -- planning -------------------------------------------------------------------------------------------------------


def _spans(size: int, tile: int | None) -> list[tuple[int, int]]:
    """Balanced cores [a, b) of at most ``tile`` covering 0..size (one core when tile is None or >= size)."""
    if tile is None or tile >= size:
        return [(0, size)]
    n = math.ceil(size / tile)
    return [(i * size // n, (i + 1) * size // n) for i in range(n)]


def _piece_side(size: int, tile: int | None, overlap: int) -> int:
    """The largest decoded window along one axis: core plus context on both sides, clipped to the latent."""
    cores = _spans(size, tile)
    return max(min(size, b + overlap) - max(0, a - overlap) for a, b in cores)


def _estimate(job: _Job, bpl: float, out_per_px: float, batch: int, frames: int | None, tile: int | None,
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


def _default_overlap(job: _Job, tile: int | None) -> int:
    if job.radius is not None:
        return job.radius
    return BLEND_OVERLAP if tile is None else min(BLEND_OVERLAP, max(1, tile // 4))


def _plan(decoder: torch.nn.Module, job: _Job, tile: int | str | None, overlap: int | None,
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
        bpl, out_per_px = _probe(decoder, job, precise=False)
        untiled = _estimate(job, bpl, out_per_px, n, None, None, 0, elt)
        if untiled <= budget:
            return replace(report, budget_bytes=budget, bytes_per_latent_pixel=bpl, estimated_peak_bytes=untiled,
                           estimated_untiled_bytes=untiled)  # fmt: skip
    bpl, out_per_px = _probe(decoder, job)
    report.budget_bytes, report.bytes_per_latent_pixel = budget, bpl
    report.output_bytes = int(out_per_px * n * (x.shape[2] if x.ndim == 5 else 1) * h * w * elt)
    report.estimated_untiled_bytes = _estimate(job, bpl, out_per_px, n, None, None, 0, elt)

    def finish(batch: int, frames: int | None, core: int | None, fits: bool) -> TileReport:
        core = None if core is not None and core >= max(h, w) else core
        ov = (_default_overlap(job, core) if overlap is None else overlap) if core is not None else 0
        exact = core is None or (job.radius is not None and ov >= job.radius)
        tiles = len(_spans(h, core)) * len(_spans(w, core))
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


# -- decoding -------------------------------------------------------------------------------------------------------


def _ramp(length: int, margin_before: int, margin_after: int) -> torch.Tensor:
    """Blend weights along one axis of a piece: rising over 2·margin_before, falling over 2·margin_after, else 1."""
    u = torch.arange(length, dtype=torch.float32) + 0.5
    w = torch.ones(length)
    if margin_before:
        w = torch.minimum(w, u / (2 * margin_before))
    if margin_after:
        w = torch.minimum(w, (length - u) / (2 * margin_after))
    return w


def _run(decoder: torch.nn.Module, job: _Job, plan: TileReport) -> torch.Tensor:
    x = job.inputs
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    if plan.mode == "whole":
        plan.pieces = 1
        return job.fn(x)
    blend = not plan.exact
    ys, xs = _spans(h, plan.tile), _spans(w, plan.tile)
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
                    chunks = _causal_chunks(decoder, piece_in, plan.frames_per_chunk or x.shape[2])
                else:
                    chunks = iter([(job.fn(piece_in), None)])
                for piece, frames in chunks:
                    plan.pieces += 1
                    if out is None:
                        f = piece.shape[-1] // (ix1 - ix0)
                        shape = list(piece.shape[:-2]) + [f * h, f * w]
                        shape[0] = n
                        if job.kind == "causal":
                            shape[2] = decoder.pixel_frames(x.shape[2])
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


def _halve(plan: TileReport, job: _Job) -> TileReport | None:
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
        tiles = len(_spans(h, core)) * len(_spans(w, core))
        return replace(plan, tile=core, overlap=overlap, exact=exact, tiles_per_image=tiles, **fresh)
    return None


def auto_tile(decoder: torch.nn.Module, latents: torch.Tensor, max_memory_bytes: int | None = None,
              overlap: int | None = None, num_frames: int | None = None) -> TileReport:  # fmt: skip
    """The plan ``decode_tiled(..., tile="auto")`` would use for these latents (decodes only a small probe)."""
    return _plan(decoder, _job(decoder, latents, num_frames), "auto", overlap, max_memory_bytes, None)


def decode_tiled(
    decoder: torch.nn.Module,
    latents: torch.Tensor,
    tile: int | str | None = None,
    overlap: int | None = None,
    max_memory_bytes: int | None = None,
    num_frames: int | None = None,
    frames_per_chunk: int | None = None,
) -> tuple[torch.Tensor, TileReport]:
    """Decode in pieces that fit memory; returns (RGB like ``decoder(latents)``, a ``TileReport``). Runs under no_grad.

    Args:
        latents: diffusion-space latents as the decoder takes them: (N, C, h, w), (N, C, t, h, w) for taehv and
            diffusers video VAEs, (B·T, C, h, w) with ``num_frames`` for tae-temporal / SVD.
        tile: core side of a spatial tile in latent pixels; None or "auto" chooses from the memory estimate (and may
            chunk only the batch or frames), "off" is one plain call.
        overlap: latent pixels of context per side; default the receptive field (exact) or ``BLEND_OVERLAP``.
        max_memory_bytes: budget for the estimated peak; default 80% of free CUDA memory, 50% of available RAM.
        frames_per_chunk: latent frames pushed at once through a taehv stream (default: from the budget).

    Returns:
        RGB in about [-1, 1] shaped as ``decoder(latents)``; report.exact says whether it equals it to rounding.

    Raises:
        FastDecodersError: with ``tile`` None/"auto", when the decoded pixels alone exceed the budget (no tiling
            can help: the output is held whole), before anything is decoded.
    """
    from fastdecoders.io import format_bytes

    job = _job(decoder, latents, num_frames)
    plan = _plan(decoder, job, tile, overlap, max_memory_bytes, frames_per_chunk)
    if tile in (None, "auto") and not plan.fits and (plan.output_bytes or 0) > (plan.budget_bytes or 0):
        raise FastDecodersError(
            f"latents of shape {tuple(latents.shape)} decode to {format_bytes(plan.output_bytes)} of pixels, more "
            f"than the {format_bytes(plan.budget_bytes)} memory budget; tiles cannot help (the output is held whole): "
            f"decode fewer or smaller latents, or raise the budget (--max-memory-mb)"
        )
    with torch.no_grad():
        while True:
            try:
                return _run(decoder, job, plan), plan
            except (RuntimeError, MemoryError) as error:
                if not (isinstance(error, MemoryError) or is_oom(error)):
                    raise
                smaller = _halve(plan, job)
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
        whole = decoder(latents) if num_frames is None else decoder(latents, num_frames=num_frames)
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
