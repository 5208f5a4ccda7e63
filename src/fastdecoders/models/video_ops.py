"""Operator swaps of video VAE decoders, as model layers: what a pruned ``diffusers-vae`` student is built from.

* ``CausalSepConv3d``: drop-in for Wan's ``WanCausalConv3d`` (k x k x k, zero or cached frames in front) as a
  depthwise k x k x k causal conv + a pointwise 1x1x1 conv: about k³·C + C·C' instead of k³·C·C' MACs per voxel.
* ``SepConv3d``: the same factorisation for LTX's inner ``nn.Conv3d`` (its wrapper keeps doing the time padding).
* ``FrameConv2d``: a per-frame k x k 2-D conv for the high-resolution stages (no temporal taps at all), drop-in for
  both Wan's and LTX's causal conv wrappers.

Initialisation from the dense teacher kernel: the separable pair is the best rank-1 fit per input channel
(``W[:, i] ≈ p_i d_iᵀ`` by SVD); the frame conv sums the temporal taps (exact for static content).
Swaps are recorded in the ``diffusers-vae`` config (``swaps``); ``apply_swaps`` rebuilds them when a saved student
is loaded. Choosing and initialising swaps is ``fastdecoders.prune.ops``.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def is_wan(vae: nn.Module) -> bool:
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


def replacement_for(vae: nn.Module, path: str, kind: str) -> tuple[str, nn.Module, nn.Conv3d]:
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
    if is_wan(vae):
        return path, CausalSepConv3d(c_in, c_out, dense.kernel_size, dense.kernel_size[1] // 2), dense
    return f"{path}.conv", SepConv3d(c_in, c_out, dense.kernel_size, dense.padding), dense


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def recount_wan_cache(vae: nn.Module) -> None:
    # the frame cache holds one slot per causal conv; replacements still take (and need) their slots
    if is_wan(vae) and hasattr(vae, "_cached_conv_counts"):
        kinds = (CausalSepConv3d, FrameConv2d)
        count = sum(type(m).__name__ == "WanCausalConv3d" or isinstance(m, kinds) for m in vae.decoder.modules())
        vae._cached_conv_counts["decoder"] = count


def apply_swaps(vae: nn.Module, swaps: Sequence[Sequence[str]]) -> None:
    """Rebuild the swapped modules (random init) of a freshly built VAE; used when loading a saved student."""
    for path, kind in swaps:
        target, module, _ = replacement_for(vae, path, kind)
        set_submodule(vae, target, module)
    recount_wan_cache(vae)
