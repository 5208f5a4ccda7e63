"""Pruning diffusers VAE decoders: AutoencoderKL (SD, SDXL, FLUX.1, SD3), AutoencoderKLWan (Wan 2.1),
AutoencoderKLLTXVideo (LTX-Video 0.9.0 layout).

Structural pruning: the student is the *same diffusers class* with narrower per-stage widths in its config
(``block_out_channels`` / ``decoder_base_dim`` + ``dim_mult`` / ``decoder_block_out_channels``), wrapped as a
``diffusers-vae`` (``fastdecoders.models.diffusers_vae``); its weights are the teacher's, sliced and folded (``plan``).

Coupling, per family (stages are counted latent side first, one per up block):

* a stage's residual stream is one space: everything a resnet adds to itself, every norm over it (GroupNorm groups
  keep equal quotas, so a student group is a subset of teacher groups), attention's input/output;
* each resnet's hidden activation (conv1 -> norm2 -> conv2) is its own space;
* where the teacher adds a stream to itself unchanged (identity shortcut) but the student's two sides get different
  widths, the student gains a 1x1 shortcut initialised as the identity's rows rebuilt from the kept input channels
  (``plan.Projection``); where the teacher has a conv shortcut, the student keeps one (widths are nudged apart);
* Wan's temporal upsampler conv emits two frames' channels stacked (``("cat", s, s)``), its spatial upsampler halves
  the width; LTX's depth-to-space upsampler owns 8 consecutive conv channels per output channel (``("expand", s, 8)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.models.diffusers_vae import DiffusersVAEConfig, DiffusersVAEDecoder, vae_kwargs
from fastdecoders.prune.plan import Plan, Projection, Space, attention_rescale, chain
from fastdecoders.prune.widths import pruned_width, stage_keeps

#: the diffusers VAE classes whose decoders prune knows how to narrow
PRUNABLE = ("AutoencoderKL", "AutoencoderKLWan", "AutoencoderKLLTXVideo")
PREFIX = "vae.decoder."


@dataclass
class VAESetup:
    plan: Plan
    keep: tuple[float, ...]
    teacher_widths: tuple[int, ...]
    widths: tuple[int, ...]
    config: DiffusersVAEConfig
    notes: list[str] = field(default_factory=list)

    def build_student(self, teacher: nn.Module) -> DiffusersVAEDecoder:
        student = DiffusersVAEDecoder(self.config)
        student.latent_space_name = getattr(teacher, "latent_space_name", None)
        return student


def vae_of(decoder: nn.Module) -> nn.Module:
    """The diffusers VAE inside ``decoder`` (a ``diffusers-vae``, a wrapper with a ``.vae``, or the VAE itself)."""
    for candidate in (decoder, getattr(decoder, "vae", None)):
        if candidate is not None and type(candidate).__name__ in PRUNABLE:
            return candidate
    raise FastDecodersError(
        f"prune supports TAE decoders and diffusers {', '.join(PRUNABLE)} decoders; got {type(decoder).__name__}"
    )


def as_teacher(decoder: nn.Module, latent_space: str | None = None) -> DiffusersVAEDecoder:
    """A ``diffusers-vae`` around the VAE in ``decoder`` (shared weights), whose module names the plans use."""
    if isinstance(decoder, DiffusersVAEDecoder):
        return decoder
    space = latent_space or getattr(decoder, "latent_space_name", None)
    return DiffusersVAEDecoder.from_diffusers(vae_of(decoder), space)


def vae_prune_setup(vae: nn.Module, keeps: Sequence[float], multiple: int = 8) -> VAESetup:
    name = type(vae).__name__
    builder = {"AutoencoderKL": _kl, "AutoencoderKLWan": _wan, "AutoencoderKLLTXVideo": _ltx}[name]
    return builder(vae, keeps, multiple, stage_keeps)


# -- helpers --------------------------------------------------------------------------------------------------------


def _widths(teacher: Sequence[int], keeps, multiple: int, divisor: int) -> tuple[int, ...]:
    return tuple(pruned_width(w, k, multiple, divisor) for w, k in zip(teacher, keeps, strict=True))


def _apart(t_in: int, t_out: int, s_in: int, s_out: int, step: int, what: str, notes: list[str]) -> int:
    """A student output width that keeps a teacher conv shortcut (t_in != t_out needs s_in != s_out)."""
    if t_in != t_out and s_in == s_out:
        notes.append(f"{what}: width {s_out} -> {s_out + step} so that the teacher's conv shortcut has a place")
        return s_out + step
    return s_out


class _Builder:
    """Small helpers to write a plan: spaces, parameter specs and resnet-style blocks."""

    def __init__(self, blocks: int = 1):
        self.plan = Plan({}, {})
        self.blocks = blocks

    def space(self, name: str, size: int, keep: int, grouped: bool = True, kind: str = "plain") -> str:
        return self.plan.add(Space(name, size, keep, self.blocks if grouped else 1, kind))

    def params(self, prefix: str, **specs: tuple) -> None:
        for key, spec in specs.items():
            self.plan.params[f"{prefix}{key.replace('__', '.')}"] = spec

    def conv(self, prefix: str, out: Any, inp: Any, bias: bool = True) -> None:
        self.plan.params[f"{prefix}.weight"] = (out, inp)
        if bias:
            self.plan.params[f"{prefix}.bias"] = (out,)


# -- AutoencoderKL ---------------------------------------------------------------------------------------------------


def _kl(vae: nn.Module, keeps, multiple: int, stage_keeps: Callable) -> VAESetup:
    cfg = vae.config
    if list(cfg.up_block_types) != ["UpDecoderBlock2D"] * len(cfg.block_out_channels):
        raise FastDecodersError(f"only UpDecoderBlock2D AutoencoderKL decoders are supported, got {cfg.up_block_types}")
    teacher = tuple(reversed(cfg.block_out_channels))  # latent side first
    per_stage = stage_keeps(keeps, len(teacher))
    groups_t = cfg.norm_num_groups
    notes: list[str] = []
    widths = list(_widths(teacher, per_stage, multiple, 1))
    for i in range(1, len(widths)):
        widths[i] = _apart(teacher[i - 1], teacher[i], widths[i - 1], widths[i], multiple, f"stage {i}", notes)
    groups = max(g for g in range(1, groups_t + 1) if groups_t % g == 0 and all(w % g == 0 for w in widths))
    if groups != groups_t:
        notes.append(f"GroupNorm groups {groups_t} -> {groups} (must divide every pruned width)")
    b = _Builder(groups)
    dec = vae.decoder
    s0 = b.space("stream0", teacher[0], widths[0])
    b.conv(f"{PREFIX}conv_in", s0, None)
    for j, resnet in enumerate(dec.mid_block.resnets):
        _kl_resnet(b, f"{PREFIX}mid_block.resnets.{j}", resnet, s0, s0, teacher[0], widths[0])
    for j in (j for j, a in enumerate(dec.mid_block.attentions) if a is not None):
        _kl_attention(b, f"{PREFIX}mid_block.attentions.{j}", s0, teacher[0], widths[0])
    stream = s0
    for i, block in enumerate(dec.up_blocks):
        p = f"{PREFIX}up_blocks.{i}"
        inp = stream  # the previous stage's stream, or the previous upsampler's output
        first = block.resnets[0]
        same_t, same_s = first.conv_shortcut is None, (i == 0 or widths[i - 1] == widths[i])
        stream = inp if (same_t and same_s) else b.space(f"stream{i}", teacher[i], widths[i])
        for j, resnet in enumerate(block.resnets):
            _kl_resnet(b, f"{p}.resnets.{j}", resnet, inp if j == 0 else stream, stream, teacher[i], widths[i])
        if same_t and not same_s:  # teacher identity, student 1x1 shortcut
            b.plan.projections[f"{p}.resnets.0.conv_shortcut.weight"] = Projection(
                stream, inp, f"{p}.resnets.0.norm1", (1, 1), f"{p}.resnets.0.conv_shortcut.bias"
            )
        if block.upsamplers is not None:
            out = b.space(f"up{i}", teacher[i], widths[i])
            b.conv(f"{p}.upsamplers.0.conv", out, stream)
            stream = out
    b.params(PREFIX, conv_norm_out__weight=(stream,), conv_norm_out__bias=(stream,))
    b.plan.params[f"{PREFIX}conv_out.weight"] = (None, stream)
    config = {**vae_kwargs(vae), "block_out_channels": list(reversed(widths)), "norm_num_groups": groups}
    return VAESetup(b.plan, per_stage, teacher, tuple(widths), DiffusersVAEConfig("AutoencoderKL", config), notes)


def _kl_resnet(b: _Builder, p: str, resnet: nn.Module, inp: str, out: str, size: int, keep: int) -> None:
    hidden = b.space(f"{p}.hidden", size, keep)
    b.params(f"{p}.", norm1__weight=(inp,), norm1__bias=(inp,), norm2__weight=(hidden,), norm2__bias=(hidden,))
    b.conv(f"{p}.conv1", hidden, inp)
    b.conv(f"{p}.conv2", out, hidden)
    if resnet.conv_shortcut is not None:
        b.conv(f"{p}.conv_shortcut", out, inp)


def _kl_attention(b: _Builder, p: str, stream: str, size: int, keep: int) -> None:
    # one head whose width is the stream's: the student's head is as narrow as its stream
    qk = b.space(f"{p}.qk", size, keep, grouped=False, kind="qk")
    v = b.space(f"{p}.v", size, keep, grouped=False)
    b.params(f"{p}.", group_norm__weight=(stream,), group_norm__bias=(stream,))
    b.conv(f"{p}.to_q", qk, stream)
    b.conv(f"{p}.to_k", qk, stream)
    b.conv(f"{p}.to_v", v, stream)
    b.conv(f"{p}.to_out.0", stream, v)
    b.plan.finalize = chain(b.plan.finalize, attention_rescale(f"{p}.to_q", None, size, keep))


# -- AutoencoderKLWan (Wan 2.1 layout) -------------------------------------------------------------------------------


def _wan(vae: nn.Module, keeps, multiple: int, stage_keeps: Callable) -> VAESetup:
    cfg = vae.config
    if cfg.is_residual or cfg.patch_size:
        raise FastDecodersError("Wan 2.2's residual up blocks (DupUp3D shortcuts, patch_size) are not supported yet; "
                                "prune a Wan 2.1-layout AutoencoderKLWan")  # fmt: skip
    dec = vae.decoder
    base = cfg.decoder_base_dim or cfg.base_dim
    mult = list(cfg.dim_mult)
    teacher = tuple(base * u for u in mult[::-1])  # stage widths, latent side first (mid block = stage 0)
    per_stage = stage_keeps(keeps, len(teacher))
    notes: list[str] = []
    widths = list(_widths(teacher, per_stage, multiple, 2))  # even: the spatial upsampler halves its input
    for i in range(1, len(widths)):
        step = multiple if widths[i] >= multiple else 2
        widths[i] = _apart(teacher[i - 1] // 2, teacher[i], widths[i - 1] // 2, widths[i], step, f"stage {i}", notes)
    b = _Builder(1)
    s0 = b.space("stream0", teacher[0], widths[0])
    b.conv(f"{PREFIX}conv_in", s0, None)
    for j, _ in enumerate(dec.mid_block.resnets):
        _wan_resnet(b, f"{PREFIX}mid_block.resnets.{j}", dec.mid_block.resnets[j], s0, s0, teacher[0], widths[0])
    for j, _ in enumerate(dec.mid_block.attentions):
        _wan_attention(b, f"{PREFIX}mid_block.attentions.{j}", s0, teacher[0], widths[0])
    stream = s0
    for i, block in enumerate(dec.up_blocks):
        p = f"{PREFIX}up_blocks.{i}"
        inp = stream
        first = block.resnets[0]
        same_t = isinstance(first.conv_shortcut, nn.Identity)
        same_s = (widths[0] if i == 0 else widths[i - 1] // 2) == widths[i]
        stream = inp if (same_t and same_s) else b.space(f"stream{i}", teacher[i], widths[i])
        for j, resnet in enumerate(block.resnets):
            _wan_resnet(b, f"{p}.resnets.{j}", resnet, inp if j == 0 else stream, stream, teacher[i], widths[i])
        if same_t and not same_s:
            b.plan.projections[f"{p}.resnets.0.conv_shortcut.weight"] = Projection(
                stream, inp, f"{p}.resnets.0.norm1", (1, 1, 1), f"{p}.resnets.0.conv_shortcut.bias"
            )
        if block.upsamplers is not None:
            up = block.upsamplers[0]
            if hasattr(up, "time_conv"):  # two frames' channels stacked: frame 0 then frame 1
                b.conv(f"{p}.upsamplers.0.time_conv", ("cat", stream, stream), stream)
            out = b.space(f"up{i}", teacher[i] // 2, widths[i] // 2)
            b.conv(f"{p}.upsamplers.0.resample.1", out, stream)
            stream = out
    b.params(PREFIX, norm_out__gamma=(stream,))
    b.plan.params[f"{PREFIX}conv_out.weight"] = (None, stream)
    unit = math.gcd(*widths)
    config = {
        **vae_kwargs(vae),
        "decoder_base_dim": unit,
        "dim_mult": [w // unit for w in reversed(widths)],
        "base_dim": 1,  # sizes only diffusers' encoder, which a decoder drops: keep it tiny
    }
    return VAESetup(b.plan, per_stage, teacher, tuple(widths), DiffusersVAEConfig("AutoencoderKLWan", config), notes)


def _wan_resnet(b: _Builder, p: str, resnet: nn.Module, inp: str, out: str, size: int, keep: int) -> None:
    hidden = b.space(f"{p}.hidden", size, keep)
    b.params(f"{p}.", norm1__gamma=(inp,), norm2__gamma=(hidden,))
    b.conv(f"{p}.conv1", hidden, inp)
    b.conv(f"{p}.conv2", out, hidden)
    if not isinstance(resnet.conv_shortcut, nn.Identity):
        b.conv(f"{p}.conv_shortcut", out, inp)


def _wan_attention(b: _Builder, p: str, stream: str, size: int, keep: int) -> None:
    qk = b.space(f"{p}.qk", size, keep, kind="qk")
    v = b.space(f"{p}.v", size, keep)
    b.params(f"{p}.", norm__gamma=(stream,))
    b.conv(f"{p}.to_qkv", ("cat", qk, qk, v), stream)
    b.conv(f"{p}.proj", stream, v)
    b.plan.finalize = chain(b.plan.finalize, attention_rescale(f"{p}.to_qkv", slice(0, keep), size, keep))


# -- AutoencoderKLLTXVideo (0.9.0 layout) ----------------------------------------------------------------------------


def _ltx(vae: nn.Module, keeps, multiple: int, stage_keeps: Callable) -> VAESetup:
    cfg = vae.config
    unsupported = [
        k for k, bad in (
            ("timestep_conditioning", cfg.timestep_conditioning),
            ("decoder_inject_noise", any(cfg.decoder_inject_noise)),
            ("upsample_residual", any(cfg.upsample_residual)),
            ("upsample_factor", any(f != 1 for f in cfg.upsample_factor)),
        ) if bad
    ]  # fmt: skip
    if unsupported:
        raise FastDecodersError(f"LTX decoders with {', '.join(unsupported)} (LTX-Video >= 0.9.1) are not supported "
                                f"yet; prune a 0.9.0-layout AutoencoderKLLTXVideo")  # fmt: skip
    dec = vae.decoder
    teacher = tuple(reversed(cfg.decoder_block_out_channels))
    per_stage = stage_keeps(keeps, len(teacher))
    notes: list[str] = []
    widths = list(_widths(teacher, per_stage, multiple, 1))
    for i in range(1, len(widths)):
        if teacher[i - 1] == teacher[i] and widths[i - 1] != widths[i]:
            # no conv_in block in the teacher: the stream passes on unchanged, so both sides keep one width
            notes.append(f"stage {i}: width {widths[i]} -> {widths[i - 1]} (shares the stream of stage {i - 1})")
            widths[i] = widths[i - 1]
        widths[i] = _apart(teacher[i - 1], teacher[i], widths[i - 1], widths[i], multiple, f"stage {i}", notes)
    b = _Builder(1)
    stream = b.space("stream0", teacher[0], widths[0])
    b.conv(f"{PREFIX}conv_in.conv", stream, None)
    for j, resnet in enumerate(dec.mid_block.resnets):
        _ltx_resnet(b, f"{PREFIX}mid_block.resnets.{j}", resnet, stream, stream, teacher[0], widths[0])
    for i, block in enumerate(dec.up_blocks):
        p = f"{PREFIX}up_blocks.{i}"
        if block.conv_in is not None:
            out = b.space(f"in{i}", teacher[i], widths[i])
            _ltx_resnet(b, f"{p}.conv_in", block.conv_in, stream, out, teacher[i], widths[i])
            stream = out
        if block.upsamplers is not None:
            out = b.space(f"up{i}", teacher[i], widths[i])
            b.conv(f"{p}.upsamplers.0.conv.conv", ("expand", out, 8), stream)
            stream = out
        for j, resnet in enumerate(block.resnets):
            _ltx_resnet(b, f"{p}.resnets.{j}", resnet, stream, stream, teacher[i], widths[i])
    b.plan.params[f"{PREFIX}conv_out.conv.weight"] = (None, stream)
    _ltx_norms(b, dec)
    config = {
        **vae_kwargs(vae),
        "decoder_block_out_channels": list(reversed(widths)),
        # sizes only diffusers' encoder, which a decoder drops: keep it small
        "block_out_channels": [min(w, 32) for w in cfg.block_out_channels],
    }
    config_obj = DiffusersVAEConfig("AutoencoderKLLTXVideo", config)
    return VAESetup(b.plan, per_stage, teacher, tuple(widths), config_obj, notes)


def _ltx_resnet(b: _Builder, p: str, resnet: nn.Module, inp: str, out: str, size: int, keep: int) -> None:
    hidden = b.space(f"{p}.hidden", size, keep)
    b.conv(f"{p}.conv1.conv", hidden, inp)
    b.conv(f"{p}.conv2.conv", out, hidden)
    b.plan.params[f"{p}.norm1.weight"] = (inp,)
    b.plan.params[f"{p}.norm2.weight"] = (hidden,)
    if resnet.conv_shortcut is not None:
        b.conv(f"{p}.conv_shortcut.conv", out, inp)
        b.params(f"{p}.", norm3__weight=(inp,), norm3__bias=(inp,))


def _ltx_norms(b: _Builder, dec: nn.Module) -> None:
    """Affine RMSNorm weights exist only with elementwise_affine; drop the specs of those that are absent."""
    state = {f"{PREFIX}{k}" for k in dec.state_dict()}
    for key in [k for k in b.plan.params if k.endswith((".norm1.weight", ".norm2.weight"))]:
        if key not in state:
            del b.plan.params[key]
