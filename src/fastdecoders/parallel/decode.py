"""Patch-parallel decode: one image or clip split by latent rows across the ranks of a torch.distributed group.

Two exact modes (fp32: equal to the single-process decode to float rounding):

* ``"halo"`` for decoders with a bounded ``receptive_field`` R (the TAE family): each rank decodes its band plus R
  latent rows of context on each side that has a neighbour, keeps its own rows and drops the rest. No communication
  until the bands are gathered; costs 2R extra latent rows of compute per inner band.
* ``"layers"`` for any decoder built from layers with a band form (``fastdecoders.parallel.layers``: AutoencoderKL,
  Wan, TAE): each rank decodes only its own rows; convolutions exchange halo rows with the neighbours, GroupNorm
  all-reduces its statistics and mid-block attention all-gathers keys and values.

``"auto"`` takes ``"halo"`` when the receptive field is known, else ``"layers"``. Activations per rank are about 1/N
of the whole decode's (plus the halo rows; plus the full mid-block K/V in ``"layers"`` mode).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.models.protocol import call_kind
from fastdecoders.parallel.comm import Bands, gather_bands, split_rows
from fastdecoders.parallel.layers import band_layers, unsupported

MODES = ("auto", "halo", "layers")


def init_process_group(device: str | torch.device = "cpu", timeout_s: float = 600.0) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT) unless
    one exists; NCCL for CUDA (each rank on ``cuda:LOCAL_RANK``), gloo otherwise. ``timeout_s`` bounds how long a rank
    waits on a peer that died or hangs. Returns (rank, world size)."""
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise FastDecodersError(
                "--parallel: expected to run under torchrun (RANK and WORLD_SIZE set), got neither; launch with "
                "`torchrun --nproc-per-node N -m fastdecoders decode ... --parallel`"
            )
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def choose_mode(decoder: nn.Module, mode: str = "auto") -> str:
    """The mode ``parallel_decode`` uses for ``decoder`` (see the module docstring); one clear error if none fits."""
    if mode not in MODES:
        raise FastDecodersError(f"patch-parallel mode: expected one of {', '.join(MODES)}, got {mode!r}")
    radius = getattr(decoder, "receptive_field", None)
    if mode == "halo" and radius is None:
        raise FastDecodersError(f"patch-parallel mode 'halo' needs a bounded receptive field; "
                                f"{type(decoder).__name__} has none (use 'layers')")  # fmt: skip
    if mode == "auto":
        mode = "halo" if radius is not None else "layers"
    if mode == "layers":
        problem = unsupported(decoder)
        if problem is not None:
            raise FastDecodersError(f"no exact patch-parallel form: {problem}")
    return mode


def parallel_decode(
    decoder: nn.Module,
    latents: torch.Tensor,
    *,
    group: Any = None,
    mode: str = "auto",
    dst: int | None = None,
    **decoder_kwargs: Any,
) -> torch.Tensor | None:
    """``decoder(latents, **decoder_kwargs)`` computed by all ranks of ``group`` together, split by latent rows.

    Every rank calls this with the same decoder (same weights) and the same latents: (B, C, h, w) for image decoders,
    (B, C, t, h, w) for video decoders (rows are always axis -2; a clip's frames stay together on each rank, as causal
    video decoders need). Works with gloo and NCCL; without an initialised process group it is a plain call.

    Returns the whole output, RGB in about [-1, 1] shaped as ``decoder(latents)``: on every rank when ``dst`` is None,
    else on group rank ``dst`` only (None elsewhere: the others never hold the whole image).
    """
    mode = choose_mode(decoder, mode)
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(group) == 1:
        out = decoder(latents, **decoder_kwargs)
        return out if dst in (None, 0) else None
    bands = Bands(split_rows(latents.shape[-2], dist.get_world_size(group)), dist.get_rank(group), group)
    start, rows = bands.start(), bands.rows[bands.rank]
    if mode == "halo":
        radius = decoder.receptive_field
        lo, hi = max(0, start - radius), min(latents.shape[-2], start + rows + radius)
        out = decoder(latents.narrow(-2, lo, hi - lo), **decoder_kwargs)
        factor = out.shape[-2] // (hi - lo)
        band = out.narrow(-2, (start - lo) * factor, rows * factor)
    else:
        with band_layers(decoder, bands):
            band = decoder(latents.narrow(-2, start, rows), **decoder_kwargs)
    return gather_bands(band, -2, bands, dst)


def parallel_decode_frames(
    decoder: nn.Module, latents: torch.Tensor, *, group: Any = None, dst: int | None = None
) -> torch.Tensor | None:
    """(N, C, h, w) frames or images decoded independently, split by item across the ranks (exact: items never mix).

    For image decoders only (not ``decodes_clips``); video decoders mix frames, use ``parallel_decode`` (rows) there.
    """
    if decoder.decodes_clips:
        raise FastDecodersError(f"frame-parallel decode needs an image decoder (frames independent), "
                                f"got a {call_kind(decoder)} decoder; split it by rows")  # fmt: skip
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(group) == 1:
        out = decoder(latents)
        return out if dst in (None, 0) else None
    bands = Bands(split_rows(latents.shape[0], dist.get_world_size(group)), dist.get_rank(group), group)
    mine = decoder(latents.narrow(0, bands.start(), bands.rows[bands.rank]))
    return gather_bands(mine, 0, bands, dst)
