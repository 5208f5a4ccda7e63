"""Exact row-band forms of the layers of GroupNorm/attention decoders (diffusers ``AutoencoderKL`` and
``AutoencoderKLWan``, and the TAE family), patched in for the duration of one decode (``band_layers``).

Each rank runs the unchanged decoder on its band of rows; only the layers whose output at a row depends on other rows
change:

* **convolutions** (``nn.Conv2d``; Wan's causal ``Conv3d``): the ``p`` rows of padding above and below come from the
  neighbouring bands (``exchange_halo``) instead of zeros. A 2-d conv runs on the band as it is (zero-padded) and only
  its first and last ``p`` output rows are recomputed with the neighbours' rows, so no band-sized padded copy exists.
* **GroupNorm**: each rank's per-group count, mean and variance (fp32, one pass) are combined over the ranks with two
  tiny all-reduces (the global mean, then the pooled squared deviations), so every band is normalised with the whole
  map's statistics; applied as one fused ``x·scale + shift``, no more memory than the native layer.
* **attention over all pixels** (the AutoencoderKL mid-block's diffusers ``Attention``; Wan's per-frame
  ``WanAttentionBlock``): queries stay local; keys and values are all-gathered. Exact; costs every rank the full K and V
  of the mid-block (2 · pixels/64 · channels values for an f8 VAE: 64 MiB fp32 for a 1024² SDXL image) plus the
  transient gather buffers.

Everything else must be row-local (pointwise, per-pixel channel mixing, nearest upsampling). That is checked by type
against the modules whose forward code was read for this (``unsupported``), so an unknown module is an error, never a
silently wrong image.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.models.diffusers_vae import DiffusersVAEDecoder
from fastdecoders.models.layers import Clamp, TAEBlock
from fastdecoders.models.tae import TAEDecoder
from fastdecoders.models.temporal import TemporalMidBlock, TemporalTAEDecoder
from fastdecoders.parallel.comm import Bands, all_reduce_sum, exchange_halo, gather_bands


@functools.cache
def _diffusers_classes() -> dict[str, type]:
    """The diffusers classes we know by name (empty when diffusers is not installed)."""
    found: dict[str, type] = {}
    with suppress(ImportError):
        from diffusers.models import attention_processor, resnet, upsampling
        from diffusers.models.autoencoders import autoencoder_kl, autoencoder_kl_wan, vae

        wan = ("AutoencoderKLWan", "WanDecoder3d", "WanResidualBlock", "WanRMS_norm", "WanMidBlock", "WanUpBlock",
               "WanResidualUpBlock", "WanResample", "DupUp3D", "WanCausalConv3d", "WanAttentionBlock")  # fmt: skip
        for module, names in (
            (attention_processor, ("Attention",)),
            (resnet, ("ResnetBlock2D",)),
            (upsampling, ("Upsample2D",)),
            (autoencoder_kl, ("AutoencoderKL",)),
            (vae, ("Decoder",)),
            (autoencoder_kl_wan, wan),
        ):
            found.update({name: getattr(module, name) for name in names if hasattr(module, name)})
        from diffusers.models.unets import unet_2d_blocks

        found.update({n: getattr(unet_2d_blocks, n) for n in ("UNetMidBlock2D", "UpDecoderBlock2D")})
    return found


@functools.cache
def _row_local_types() -> tuple[type, ...]:
    """Modules whose own forward code (read for this) only mixes channels, columns or frames, never rows."""
    torch_types = (nn.ReLU, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout, nn.Linear,
                   nn.Sequential, nn.ModuleList)  # fmt: skip
    ours = (Clamp, TAEBlock, TAEDecoder, DiffusersVAEDecoder, TemporalMidBlock, TemporalTAEDecoder)
    names = ("AutoencoderKL", "Decoder", "UNetMidBlock2D", "UpDecoderBlock2D", "AutoencoderKLWan", "WanDecoder3d",
             "WanResidualBlock", "WanMidBlock", "WanUpBlock", "WanResidualUpBlock", "DupUp3D")  # fmt: skip
    known = _diffusers_classes()
    return torch_types + ours + tuple(known[n] for n in names if n in known)


def _problem(module: nn.Module) -> str | None:
    """Why ``module`` has no exact band form here, or None if it has one (patched or row-local)."""
    known = _diffusers_classes()
    kind = type(module)
    if kind is nn.Conv2d or kind is known.get("WanCausalConv3d"):
        kh, dh = module.kernel_size[-2], module.dilation[-2]
        pad = module._padding[2] if kind is known.get("WanCausalConv3d") else module.padding[0]
        if module.stride[-2] != 1 or isinstance(pad, str) or pad != dh * (kh - 1) // 2 or kh % 2 == 0:
            return f"a convolution that is not stride-1 'same' along rows ({module})"
        if getattr(module, "padding_mode", "zeros") != "zeros":
            return f"a convolution with {module.padding_mode} padding"
        return None
    if kind is nn.GroupNorm:
        return None
    if isinstance(module, nn.Upsample):  # Wan's WanUpsample too
        scale = module.scale_factor
        scales = scale if isinstance(scale, tuple) else (scale,)
        if module.mode not in ("nearest", "nearest-exact") or scale is None or any(float(s) % 1 for s in scales):
            return f"an upsampling that is not nearest by an integer factor ({module})"
        return None
    if kind is nn.LayerNorm:
        return None if len(module.normalized_shape) == 1 else "a LayerNorm over more than the last axis"
    if kind is known.get("Attention"):
        if module.spatial_norm is not None or module.norm_q is not None or module.is_cross_attention:
            return "an attention with spatial norm, QK norm or cross-attention"
        return None
    if kind is known.get("WanAttentionBlock"):
        return None
    if kind is known.get("WanRMS_norm"):
        return None if module.channel_first else "an RMS norm over the last axis"
    if kind is known.get("ResnetBlock2D"):
        if module.up or module.down or module.time_emb_proj is not None:
            return "a resnet block that resamples or takes a time embedding"
        return None
    if kind is known.get("Upsample2D"):
        if module.use_conv_transpose or not module.interpolate:
            return "an Upsample2D that is not nearest interpolation + conv"
        return None
    if kind is known.get("WanResample"):
        return None if module.mode in ("none", "upsample2d", "upsample3d") else f"a Wan {module.mode}"
    if isinstance(module, _row_local_types()):
        return None
    return f"an unknown module type {kind.__name__} (its effect on rows is not known)"


def unsupported(decoder: nn.Module) -> str | None:
    """One line saying why ``decoder`` cannot be decoded band by band exactly, or None if it can."""
    attention = tuple(t for n, t in _diffusers_classes().items() if n in ("Attention", "WanAttentionBlock"))
    skip: set[int] = set()  # children of attention modules run inside our replacement forward
    for name, module in decoder.named_modules():
        if id(module) in skip:
            continue
        if attention and isinstance(module, attention):
            skip.update(id(m) for m in module.modules() if m is not module and not isinstance(m, nn.GroupNorm))
        problem = _problem(module)
        if problem is not None:
            return f"{type(decoder).__name__} has {problem} at '{name or '<root>'}'"
    return None


# -- band forms -------------------------------------------------------------------------------------------------------


def _conv2d_forward(conv: nn.Conv2d, bands: Bands):
    ph, pw = conv.padding

    def forward(x: torch.Tensor) -> torch.Tensor:
        def conv_valid_rows(rows: torch.Tensor) -> torch.Tensor:
            return F.conv2d(rows, conv.weight, conv.bias, conv.stride, (0, pw), conv.dilation, conv.groups)

        if ph == 0:
            return type(conv).forward(conv, x)
        top, bottom = exchange_halo(x, ph, ph, -2, bands)
        if x.shape[-2] < 4 * ph:  # a thin band: one padded copy is small
            return conv_valid_rows(torch.cat([top, x, bottom], dim=-2))
        # the band as it is (zero-padded) is right except its first and last ph rows; redo just those
        y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if bands.rank > 0:
            y[..., :ph, :] = conv_valid_rows(torch.cat([top, x[..., : 2 * ph, :]], dim=-2))
        if bands.rank < bands.world - 1:
            y[..., -ph:, :] = conv_valid_rows(torch.cat([x[..., -2 * ph :, :], bottom], dim=-2))
        return y

    return forward


def _with_halo(x: torch.Tensor, p: int, bands: Bands) -> torch.Tensor:
    top, bottom = exchange_halo(x, p, p, -2, bands)
    return torch.cat([top, x, bottom], dim=-2)


def _causal_conv3d_forward(conv: nn.Module, bands: Bands, ph: int):
    """Wan's causal conv with its row padding (set to 0 meanwhile) taken from the neighbours: on the input and on the
    cached previous frames, which the conv prepends in time."""
    base = type(conv).forward

    def forward(x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        x = _with_halo(x, ph, bands)
        if cache_x is not None and conv._padding[4] > 0:  # the same test as the conv's: used only then
            cache_x = _with_halo(cache_x.to(x.device), ph, bands)
        return base(conv, x, cache_x)

    return forward


def _group_norm_forward(norm: nn.GroupNorm, bands: Bands):
    def forward(x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        g = norm.num_groups
        # local (count, mean, variance) per group in one pass with no activation-sized temporary, then combined
        # over the ranks (Chan et al.'s pairwise formula: stable, unlike E[x²] − E[x]²)
        var, mean = torch.var_mean(x.reshape(b, g, -1).float(), dim=-1, correction=0)
        count = torch.full_like(mean, x[0, 0].numel() * (c // g))
        sums = all_reduce_sum(torch.stack([count, count * mean]), bands)
        total, global_mean = sums[0], sums[1] / sums[0]
        spread = all_reduce_sum(count * (var + (mean - global_mean).square()), bands)
        rstd = torch.rsqrt(spread / total + norm.eps)  # (b, g)
        # y = x·scale + shift per (sample, channel): one fused op, one output tensor, like the native GroupNorm
        scale = rstd.repeat_interleave(c // g, dim=1)
        shift = -global_mean.repeat_interleave(c // g, dim=1) * scale
        if norm.affine:
            scale, shift = scale * norm.weight.float(), shift * norm.weight.float() + norm.bias.float()
        shape = (b, c) + (1,) * (x.ndim - 2)
        return torch.addcmul(shift.reshape(shape).to(x.dtype), x, scale.reshape(shape).to(x.dtype))

    return forward


class _BandAttnProcessor:
    """diffusers attention processor for self-attention over all pixels of the map, called on one band: local queries,
    keys and values gathered from every band (same maths as diffusers' ``AttnProcessor2_0``)."""

    def __init__(self, bands: Bands):
        self.bands = bands

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, temb: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:  # fmt: skip
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 4:
            raise FastDecodersError("patch-parallel decode: only 4-d self-attention without a mask has a band form")
        residual = hidden_states
        b, c, h, w = hidden_states.shape
        tokens = hidden_states.view(b, c, h * w)
        if attn.group_norm is not None:  # patched: statistics of the whole map
            tokens = attn.group_norm(tokens)
        tokens = tokens.transpose(1, 2)
        query, key, value = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
        # tokens are row-major, so a band's tokens are a run of whole rows: gather them like rows
        key, value = (gather_bands(t.unflatten(1, (h, w)), 1, self.bands).flatten(1, 2) for t in (key, value))
        heads = attn.heads
        query, key, value = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value).transpose(1, 2).flatten(2).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        out = out.transpose(1, 2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _wan_attention_forward(block: nn.Module, bands: Bands):
    """Wan's single-head attention over each frame's pixels, on a band: local queries, gathered keys and values."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = block.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        q, k, v = block.to_qkv(frames).chunk(3, dim=1)  # (b·t, c, h, w) each
        k, v = (gather_bands(z, -2, bands) for z in (k, v))
        q, k, v = (z.flatten(2).transpose(1, 2)[:, None] for z in (q, k, v))  # (b·t, 1, tokens, c)
        out = F.scaled_dot_product_attention(q, k, v)[:, 0].transpose(1, 2).reshape(b * t, c, h, w)
        out = block.proj(out).view(b, t, c, h, w).permute(0, 2, 1, 3, 4)
        return out + x

    return forward


@contextmanager
def band_layers(decoder: nn.Module, bands: Bands) -> Iterator[None]:
    """Inside, ``decoder`` run on this rank's band of latent rows gives this band of the whole decode's output.

    Every rank must enter with the same decoder and latent shape and call it the same way (the patched layers talk to
    the neighbours in lockstep). The decoder is restored on exit, also after an error.
    """
    problem = unsupported(decoder)
    if problem is not None:
        raise FastDecodersError(f"no exact patch-parallel form: {problem}")
    known = _diffusers_classes()
    undo: list[tuple[Any, str, Any]] = []  # (object, attribute, old value or _MISSING)

    def patch(obj: Any, attr: str, value: Any) -> None:
        undo.append((obj, attr, obj.__dict__.get(attr, _MISSING)))
        setattr(obj, attr, value)

    try:
        for module in decoder.modules():
            kind = type(module)
            if kind is nn.Conv2d:
                patch(module, "forward", _conv2d_forward(module, bands))
            elif kind is known.get("WanCausalConv3d"):
                ph = module._padding[2]
                patch(module, "forward", _causal_conv3d_forward(module, bands, ph))
                patch(module, "_padding", (*module._padding[:2], 0, 0, *module._padding[4:]))
            elif kind is nn.GroupNorm:
                patch(module, "forward", _group_norm_forward(module, bands))
            elif kind is known.get("Attention"):
                patch(module, "processor", _BandAttnProcessor(bands))
            elif kind is known.get("WanAttentionBlock"):
                patch(module, "forward", _wan_attention_forward(module, bands))
            elif getattr(module, "use_tiling", False):  # diffusers' own tiling would split the band again
                patch(module, "use_tiling", False)
        yield
    finally:
        for obj, attr, old in reversed(undo):
            if old is _MISSING:
                delattr(obj, attr)
            else:
                setattr(obj, attr, old)


_MISSING = object()
