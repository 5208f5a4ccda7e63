"""Dominant-operator optimisation for video VAE decoders (Flash-VAED's second idea): measure which operator
dominates each stage, then swap it for a cheaper one that keeps the decoder's causality.

* ``profile_stages``: per-stage wall time and per-operator breakdown (``torch.profiler``; top-level ``aten`` ops
  under each stage's range, device time on GPU).
* ``CausalSepConv3d``: drop-in for Wan's ``WanCausalConv3d`` (k x k x k, zero or cached frames in front) as a
  depthwise k x k x k causal conv + a pointwise 1x1x1 conv: about k³·C + C·C' instead of k³·C·C' MACs per voxel.
* ``SepConv3d``: the same factorisation for LTX's inner ``nn.Conv3d`` (its wrapper keeps doing the time padding).
* ``FrameConv2d``: a per-frame k x k 2-D conv for the high-resolution stages (no temporal taps at all), drop-in for
  both Wan's and LTX's causal conv wrappers.

Initialisation from the dense teacher kernel: the separable pair is the best rank-1 fit per input channel
(``W[:, i] ≈ p_i d_iᵀ`` by SVD); the frame conv sums the temporal taps (exact for static content).
Swaps are recorded in the ``diffusers-vae`` config (``swaps``), so a saved student rebuilds the same modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastdecoders.errors import FastDecodersError

SWAP_KINDS = ("sep3d", "frame2d")


# -- replacement operators -------------------------------------------------------------------------------------------


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)  # type: ignore[return-value]


class CausalSepConv3d(nn.Module):
    """(B, C, T, H, W) -> (B, C', T, H, W): causal depthwise k_t x k x k conv, then pointwise 1x1x1.

    Same calling convention as Wan's causal conv: ``2·p_t`` zero frames in front, or the ``cache_x`` frames carried
    over from the previous chunk, so chunked decoding equals whole-clip decoding (see ``tests/test_prune_ops.py``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int] = 3, padding: int = 1):
        super().__init__()
        kt, kh, kw = _triple(kernel_size)
        pt, ph, pw = _triple(padding)
        self.time_pad = 2 * pt
        self.depthwise = nn.Conv3d(in_channels, in_channels, (kt, kh, kw), padding=(0, ph, pw), groups=in_channels,
                                   bias=False)  # fmt: skip
        self.pointwise = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        pad = self.time_pad
        if cache_x is not None and pad > 0:
            x = torch.cat([cache_x.to(x.device, x.dtype), x], dim=2)
            pad -= cache_x.shape[2]
        x = F.pad(x, (0, 0, 0, 0, pad, 0))
        return self.pointwise(self.depthwise(x))


class SepConv3d(nn.Module):
    """Depthwise + pointwise replacement of a plain ``nn.Conv3d`` (padding as the original's; LTX's wrapper pads
    time before calling it)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, padding=(0, 1, 1)):
        super().__init__()
        self.depthwise = nn.Conv3d(in_channels, in_channels, _triple(kernel_size), padding=_triple(padding),
                                   groups=in_channels, bias=False)  # fmt: skip
        self.pointwise = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class FrameConv2d(nn.Module):
    """(B, C, T, H, W) -> (B, C', T, H, W) by one 2-D conv per frame: no temporal taps, trivially causal."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        b, _, t, h, w = x.shape
        y = self.conv(x.transpose(1, 2).reshape(b * t, -1, h, w))
        return y.reshape(b, t, -1, h, w).transpose(1, 2)


# -- initialisation from a dense 3-D kernel --------------------------------------------------------------------------


@torch.no_grad()
def separable_from_dense(weight: torch.Tensor, bias: torch.Tensor | None, sep: nn.Module) -> None:
    """Set ``sep.depthwise``/``sep.pointwise`` to the per-input-channel rank-1 fit of ``weight`` (O, I, kt, kh, kw)."""
    o, i = weight.shape[:2]
    w = weight.detach().to(torch.float64).transpose(0, 1).reshape(i, o, -1)  # (I, O, taps)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:, :1].sqrt()  # (I, 1)
    depth = (vh[:, 0, :] * root).reshape(i, 1, *weight.shape[2:])
    point = (u[:, :, 0] * root).T.reshape(o, i, 1, 1, 1)
    sep.depthwise.weight.copy_(depth.to(sep.depthwise.weight.dtype))
    sep.pointwise.weight.copy_(point.to(sep.pointwise.weight.dtype))
    if bias is not None:
        sep.pointwise.bias.copy_(bias.detach())
    else:
        sep.pointwise.bias.zero_()


@torch.no_grad()
def frame_from_dense(weight: torch.Tensor, bias: torch.Tensor | None, frame: FrameConv2d) -> None:
    """Sum the temporal taps of ``weight`` (O, I, kt, kh, kw) into the 2-D kernel (exact on static frames)."""
    frame.conv.weight.copy_(weight.detach().sum(2).to(frame.conv.weight.dtype))
    if bias is not None:
        frame.conv.bias.copy_(bias.detach())
    else:
        frame.conv.bias.zero_()


# -- which convs a stage has, and swapping them ----------------------------------------------------------------------


def _is_wan(vae: nn.Module) -> bool:
    return type(vae).__name__ == "AutoencoderKLWan"


def _dense_of(module: nn.Module) -> nn.Conv3d | None:
    """The dense 3-D conv of a causal wrapper (LTX keeps it in ``.conv``, Wan's wrapper is one)."""
    if type(module).__name__ == "WanCausalConv3d":
        return module  # type: ignore[return-value]
    inner = getattr(module, "conv", None)
    return inner if type(module).__name__ == "LTXVideoCausalConv3d" and isinstance(inner, nn.Conv3d) else None


def stage_convs(vae: nn.Module, stage: int) -> list[str]:
    """Paths (inside the VAE) of the k x k x k causal-conv wrappers in the resnets of ``stage`` (0 = mid block and
    the first up block, latent side first)."""
    name = type(vae).__name__
    if name not in ("AutoencoderKLWan", "AutoencoderKLLTXVideo"):
        raise FastDecodersError(f"operator swaps apply to video decoders (Wan, LTX); {name} has 2-D convs already")
    dec = vae.decoder
    if not 0 <= stage < len(dec.up_blocks):
        raise FastDecodersError(f"stage {stage} out of range: this decoder has {len(dec.up_blocks)} stages")
    roots = [f"decoder.up_blocks.{stage}"] + (["decoder.mid_block"] if stage == 0 else [])
    paths = []
    for root in roots:
        for path, module in vae.get_submodule(root).named_modules(prefix=root):
            dense = _dense_of(module)
            if dense is not None and tuple(dense.kernel_size) == (3, 3, 3) and path.endswith((".conv1", ".conv2")):
                paths.append(path)
    return paths


def _replacement(vae: nn.Module, path: str, kind: str) -> tuple[str, nn.Module, nn.Conv3d]:
    """(path to replace, new module (random init), the dense conv it replaces)."""
    module = vae.get_submodule(path)
    dense = _dense_of(module)
    if dense is None:
        raise FastDecodersError(f"{path} is not a causal 3-D conv ({type(module).__name__})")
    c_in, c_out = dense.in_channels, dense.out_channels
    if kind == "frame2d":
        return path, FrameConv2d(c_in, c_out, dense.kernel_size[1]), dense
    if kind != "sep3d":
        raise FastDecodersError(f"unknown operator swap {kind!r}; known: {', '.join(SWAP_KINDS)}")
    if _is_wan(vae):
        return path, CausalSepConv3d(c_in, c_out, dense.kernel_size, dense.kernel_size[1] // 2), dense
    return f"{path}.conv", SepConv3d(c_in, c_out, dense.kernel_size, dense.padding), dense


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _recount_wan_cache(vae: nn.Module) -> None:
    # the frame cache holds one slot per causal conv; replacements still take (and need) their slots
    if _is_wan(vae) and hasattr(vae, "_cached_conv_counts"):
        kinds = (CausalSepConv3d, FrameConv2d)
        count = sum(type(m).__name__ == "WanCausalConv3d" or isinstance(m, kinds) for m in vae.decoder.modules())
        vae._cached_conv_counts["decoder"] = count


def apply_swaps(vae: nn.Module, swaps: Sequence[Sequence[str]]) -> None:
    """Rebuild the swapped modules (random init) of a freshly built VAE; used when loading a saved student."""
    for path, kind in swaps:
        target, module, _ = _replacement(vae, path, kind)
        _set(vae, target, module)
    _recount_wan_cache(vae)


def swap_operators(decoder: nn.Module, sep3d_stages: Sequence[int] = (), frame2d_stages: Sequence[int] = ()):
    """A copy of a ``diffusers-vae`` whose resnet convs in ``sep3d_stages`` are depthwise-separable causal 3-D convs
    and in ``frame2d_stages`` per-frame 2-D convs, initialised from the dense kernels; the swaps enter its config."""
    import copy

    from fastdecoders.models.teachers import DiffusersVAEDecoder

    if not isinstance(decoder, DiffusersVAEDecoder):
        raise FastDecodersError(f"operator swaps apply to diffusers-vae students, got {type(decoder).__name__}")
    overlap = set(sep3d_stages) & set(frame2d_stages)
    if overlap:
        raise FastDecodersError(f"stages {sorted(overlap)} are asked for both sep3d and frame2d")
    encoder = getattr(decoder.vae, "encoder", None)  # a wrapped teacher may hold its encoder: never copied
    new = copy.deepcopy(decoder, memo={id(encoder): None} if encoder is not None else None)
    if getattr(new.vae, "quant_conv", None) is not None:
        new.vae.quant_conv = None
    swaps = list(new.config.swaps)
    for kind, stages in (("sep3d", sep3d_stages), ("frame2d", frame2d_stages)):
        for stage in stages:
            for path in stage_convs(new.vae, stage):
                target, module, dense = _replacement(new.vae, path, kind)
                init = separable_from_dense if kind == "sep3d" else frame_from_dense
                init(dense.weight, dense.bias, module)
                _set(new.vae, target, module.to(dense.weight.device, dense.weight.dtype))
                swaps.append((path, kind))
    _recount_wan_cache(new.vae)
    new.config = replace(new.config, swaps=tuple(tuple(s) for s in swaps))
    return new


# -- streaming (chunked) decoding of Wan decoders ----------------------------------------------------------------------


@torch.no_grad()
def decode_chunks(decoder: nn.Module, latents: torch.Tensor, split: Sequence[int]) -> torch.Tensor:
    """(B, C, t, h, w) diffusion-space latents -> (B, 3, T, H, W) in [-1, 1], decoded by a Wan ``diffusers-vae`` in
    chunks of ``split`` latent frames (the first chunk one frame, as Wan's causal cache expects), carrying the
    causal-conv frame cache from chunk to chunk. Equal to whole-clip decoding when every conv is causal."""
    vae = getattr(decoder, "vae", None)
    if vae is None or not _is_wan(vae):
        raise FastDecodersError(f"expected a Wan diffusers-vae, got {type(vae or decoder).__name__}")
    t = latents.shape[2]
    if sum(split) != t or any(n < 0 for n in split) or not split or split[0] != 1:
        raise FastDecodersError(f"expected chunk sizes >= 0 summing to {t} latent frames, 1 first, got {list(split)}")
    x = vae.post_quant_conv(decoder.raw_latents(latents))
    vae.clear_cache()
    outs, start = [], 0
    try:
        for i, n in enumerate(split):
            if n == 0:
                continue
            vae._conv_idx = [0]
            chunk = x[:, :, start : start + n]
            outs.append(vae.decoder(chunk, feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0))
            start += n
    finally:
        vae.clear_cache()
    out = torch.cat(outs, dim=2)
    if vae.config.patch_size is not None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        out = unpatchify(out, patch_size=vae.config.patch_size)
    return out.clamp(-1.0, 1.0)


# -- timing and profiling --------------------------------------------------------------------------------------------


@torch.inference_mode()
def time_decode(decoder: nn.Module, latents: torch.Tensor, warmup: int = 1, iters: int = 3) -> float:
    """Median milliseconds of ``decoder(latents)``, synchronised (GPU work finishes inside the timed region)."""
    from fastdecoders.bench.timing import default_sync, time_fn

    return time_fn(lambda: decoder(latents), warmup=warmup, runs=iters, sync=default_sync(latents.device)).ms_median


def default_stages(decoder: nn.Module) -> dict[str, list[str]]:
    """Stage name -> module paths, latent side first (TAE: the sequence split at its stage-transition convs;
    diffusers VAEs: conv_in + mid block, each up block, the output head)."""
    vae = getattr(decoder, "vae", None)
    if vae is not None and hasattr(vae, "decoder"):
        dec = "vae.decoder"
        stages = {"in+mid": [f"{dec}.conv_in", f"{dec}.mid_block"]}
        for i in range(len(vae.decoder.up_blocks)):
            stages[f"up{i}"] = [f"{dec}.up_blocks.{i}"]
        stages["out"] = [f"{dec}.{n}" for n in ("conv_norm_out", "norm_out", "conv_act", "conv_out")
                         if getattr(vae.decoder, n, None) is not None]  # fmt: skip
        return stages
    names = [n for n, _ in decoder.named_children()]
    convs = [n for n, m in decoder.named_children() if isinstance(m, nn.Conv2d)]
    cuts = convs[1:-1]  # stage transitions of a TAE: every conv but the first and the last
    stages: dict[str, list[str]] = {"stage0": []}
    for name in names:
        if name in cuts:
            stages[f"stage{len(stages)}"] = []
        stages[list(stages)[-1]].append(name)
    return stages


@torch.inference_mode()
def profile_stages(
    decoder: nn.Module, latents: torch.Tensor, stages: dict[str, list[str]] | None = None, top: int = 4
) -> dict[str, Any]:
    """Per stage: milliseconds (one profiled run after a warm-up) and the top operators by time.

    Returns ``{"device", "total_ms", "stages": [{"stage", "ms", "share", "dominant", "ops": [{"op", "ms", "share"}]}]}``
    (shares of the profile's total, and of the stage's time for ops).
    Times are self-consistent within one profile (profiling adds overhead; use ``time_decode`` for speed).
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    from fastdecoders.bench.timing import default_sync

    stages = stages or default_stages(decoder)
    device = latents.device
    sync = default_sync(device)
    decoder(latents)  # warm-up (cuDNN autotuning, lazy init)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with ExitStack() as stack:
        open_ranges: dict[str, list[Any]] = {}
        for stage, paths in stages.items():
            for path in paths:
                module = decoder.get_submodule(path)
                stack.callback(module.register_forward_pre_hook(_enter(stage, open_ranges, record_function)).remove)
                stack.callback(module.register_forward_hook(_leave(stage, open_ranges)).remove)
        with profile(activities=activities) as prof:
            decoder(latents)
            sync()
    return _summarise(prof.events(), list(stages), device.type == "cuda", top)


def _enter(stage: str, open_ranges: dict, record_function: Callable) -> Callable:
    def hook(module, args):
        ctx = record_function(f"stage:{stage}")
        ctx.__enter__()
        open_ranges.setdefault(stage, []).append(ctx)

    return hook


def _leave(stage: str, open_ranges: dict) -> Callable:
    def hook(module, args, out):
        open_ranges[stage].pop().__exit__(None, None, None)

    return hook


def _summarise(events, stage_names: list[str], cuda: bool, top: int) -> dict[str, Any]:
    per_stage: dict[str, dict[str, float]] = {s: {} for s in stage_names + ["other"]}
    for ev in events:
        if not ev.name.startswith("aten::"):
            continue
        parent, stage, nested = ev.cpu_parent, "other", False
        while parent is not None:
            if parent.name.startswith("aten::"):
                nested = True
                break
            if parent.name.startswith("stage:"):
                stage = parent.name[len("stage:") :]
                break
            parent = parent.cpu_parent
        if nested:
            continue
        us = ev.device_time_total if cuda else ev.cpu_time_total
        per_stage[stage][ev.name] = per_stage[stage].get(ev.name, 0.0) + us / 1e3
    total = sum(sum(ops.values()) for ops in per_stage.values()) or 1.0
    rows = []
    for stage, ops in per_stage.items():
        ms = sum(ops.values())
        if stage == "other" and ms == 0:
            continue
        ranked = sorted(ops.items(), key=lambda kv: -kv[1])
        rows.append({
            "stage": stage, "ms": ms, "share": ms / total, "dominant": ranked[0][0] if ranked else None,
            "ops": [{"op": op, "ms": t, "share": t / ms if ms else 0.0} for op, t in ranked[:top]],
        })  # fmt: skip
    return {"device": "cuda" if cuda else "cpu", "total_ms": total, "stages": rows}
