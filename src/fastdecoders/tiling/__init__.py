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

The package: ``memory`` (measurement, budget, the probe), ``plan`` (report, estimate, choice), ``run`` (pieces and the
entry points). What to cut up comes from the decoder itself (``tile_job``, ``fastdecoders.models.protocol``).
"""

from fastdecoders.tiling.memory import (
    AUTO_BUDGET_FRACTION,
    PROBE_SIZE,
    ROUGH_FACTOR,
    LiveBytes,
    is_oom,
    measure_peak_bytes,
    memory_budget,
    rough_peak_bytes,
)
from fastdecoders.tiling.plan import BLEND_OVERLAP, TileReport
from fastdecoders.tiling.run import auto_tile, compare_tiled, decode_tiled, parse_tile, stream_decode

__all__ = [
    "AUTO_BUDGET_FRACTION",
    "BLEND_OVERLAP",
    "PROBE_SIZE",
    "ROUGH_FACTOR",
    "LiveBytes",
    "TileReport",
    "auto_tile",
    "compare_tiled",
    "decode_tiled",
    "is_oom",
    "measure_peak_bytes",
    "memory_budget",
    "parse_tile",
    "rough_peak_bytes",
    "stream_decode",
]
