"""Dominant-operator optimisation for video VAE decoders (Flash-VAED's second idea): measure which operator
dominates each stage, then swap it for a cheaper one that keeps the decoder's causality.

* ``profile_stages``: per-stage wall time and per-operator breakdown (``torch.profiler``; top-level ``aten`` ops
  under each stage's range, device time on GPU).
* ``swap_operators``: a student whose resnet convs in chosen stages are the cheaper layers of
  ``fastdecoders.models.video_ops`` (depthwise-separable causal 3-D, or per-frame 2-D), initialised from the dense
  teacher kernels; the swaps enter its ``diffusers-vae`` config, so a saved student rebuilds the same modules.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from fastdecoders.bench.timing import default_sync, time_fn
from fastdecoders.errors import FastDecodersError
from fastdecoders.models.diffusers_vae import DiffusersVAEDecoder
from fastdecoders.models.video_ops import (
    frame_from_dense,
    is_wan,
    recount_wan_cache,
    replacement_for,
    separable_from_dense,
    set_submodule,
    stage_convs,
)


def swap_operators(decoder: nn.Module, sep3d_stages: Sequence[int] = (), frame2d_stages: Sequence[int] = ()):
    """A copy of a ``diffusers-vae`` whose resnet convs in ``sep3d_stages`` are depthwise-separable causal 3-D convs
    and in ``frame2d_stages`` per-frame 2-D convs, initialised from the dense kernels; the swaps enter its config."""
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
                target, module, dense = replacement_for(new.vae, path, kind)
                init = separable_from_dense if kind == "sep3d" else frame_from_dense
                init(dense.weight, dense.bias, module)
                set_submodule(new.vae, target, module.to(dense.weight.device, dense.weight.dtype))
                swaps.append((path, kind))
    recount_wan_cache(new.vae)
    new.config = replace(new.config, swaps=tuple(tuple(s) for s in swaps))
    return new


# -- streaming (chunked) decoding of Wan decoders ----------------------------------------------------------------------


@torch.no_grad()
def decode_chunks(decoder: nn.Module, latents: torch.Tensor, split: Sequence[int]) -> torch.Tensor:
    """(B, C, t, h, w) diffusion-space latents -> (B, 3, T, H, W) in [-1, 1], decoded by a Wan ``diffusers-vae`` in
    chunks of ``split`` latent frames (the first chunk one frame, as Wan's causal cache expects), carrying the
    causal-conv frame cache from chunk to chunk. Equal to whole-clip decoding when every conv is causal."""
    vae = getattr(decoder, "vae", None)
    if vae is None or not is_wan(vae):
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
def feature_points(decoder: nn.Module) -> list[str]:
    """Module paths whose outputs are aligned: the last module with weights of every stage but the output head
    (latent side first; a TAE stage's last ResBlock, before its parameter-free upsampler)."""
    stages = [paths for paths in default_stages(decoder).values() if paths]
    points = []
    for paths in stages[:-1]:
        weighted = [p for p in paths if any(True for _ in decoder.get_submodule(p).parameters())]
        points.append((weighted or paths)[-1])
    return points


def profile_stages(
    decoder: nn.Module, latents: torch.Tensor, stages: dict[str, list[str]] | None = None, top: int = 4
) -> dict[str, Any]:
    """Per stage: milliseconds (one profiled run after a warm-up) and the top operators by time.

    Returns ``{"device", "total_ms", "stages": [{"stage", "ms", "share", "dominant", "ops": [{"op", "ms", "share"}]}]}``
    (shares of the profile's total, and of the stage's time for ops).
    Times are self-consistent within one profile (profiling adds overhead; use ``time_decode`` for speed).
    """
    from torch.profiler import ProfilerActivity, profile, record_function


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
