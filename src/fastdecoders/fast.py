"""Fast inference paths for decoders, each verified equal to eager (tests/test_fast.py), and fp16 without overflow.

``optimize(decoder, backend, dtype)`` returns the decoder (changed in place) ready for inference:

* ``"eager"``: eval mode, no autograd state, the dtype/device asked for, BatchNorm folded into the conv before it
  (EffViT's ResBlocks, attention projections and MBConvs: one conv instead of conv + norm at inference);
* ``"channels_last"``: that, plus NHWC weights and inputs (cuDNN / oneDNN's fast layout for 3x3 convs);
  outputs stay NHWC-strided (no copy back; ``.contiguous()`` if a consumer needs NCHW storage);
* ``"compile"``: that, plus ``torch.compile`` (inductor fuses conv epilogues: bias + ReLU + residual add).
* ``"onnxruntime"`` / ``"openvino"``: that, exported to ONNX once (cached on disk) and run by ONNX Runtime or
  OpenVINO (``fastdecoders.backends``): returns a new module, called like the decoder, that holds it;
* ``"auto"``: the fastest of the above measured for this decoder, latents ``shape``, dtype and device, cached
  (``fastdecoders.backends.choose_backend``); ``.fastdecoders_auto`` records the measurement.

fp16 safety. ``activation_ranges`` records the max |activation| of every layer; ``fp16_report`` compares it with
fp16's largest finite value, 65504. Upstream weights (../shared/weights/taesd), 12 Kodak images (kodim01, 03, ..., 23
at 256x384): the worst layer peaks at 9.8 (taesd), 15.7 (taesdxl), 35.4 (taesd3), 252 (taef1), 18.0 (taef2), so
>= 260x headroom; on random ±3 latents (saturated: the most the TAE's input soft clamp lets through) at 22, 66, 121,
879 and 35: >= 74x. A CPU fp16 decode of a 16x16 Kodak latent crop is finite and within 0.019 of fp32 for all five
(benchmarks/README.md, "Bounded memory (CPU)"). ``optimize(dtype=float16)`` keeps fp16 for the TAE family and
EffViT (whose linear-attention sums already run in float32) and switches other decoders (diffusers VAEs: SDXL's is
known to overflow in fp16; taehv: its published weights are not available here to measure) to bfloat16 with a
warning, unless ``allow_fp16_overflow=True``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError

BACKENDS = ("eager", "channels_last", "compile", "onnxruntime", "openvino", "auto")
FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504


# -- fp16 range analysis --------------------------------------------------------------------------------------------


def activation_ranges(decoder: nn.Module, latents: torch.Tensor) -> dict[str, float]:
    """Max |output| of every leaf module and residual block while decoding ``latents`` (run in float32)."""
    from fastdecoders.models.layers import ResBlock

    ranges: dict[str, float] = {}
    hooks = []
    for name, module in decoder.named_modules():
        if name and (not list(module.children()) or isinstance(module, ResBlock)):

            def record(mod, args, out, name=name):
                if isinstance(out, torch.Tensor):
                    ranges[name] = max(ranges.get(name, 0.0), float(out.detach().abs().max()))

            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            decoder.float()(latents.float())
    finally:
        for hook in hooks:
            hook.remove()
    return ranges


def fp16_report(decoder: nn.Module, latents: torch.Tensor) -> dict[str, Any]:
    """{"max_abs", "headroom", "worst_layer"} over all layers for these latents; headroom = 65504 / max_abs."""
    ranges = activation_ranges(decoder, latents)
    worst = max(ranges, key=ranges.get)
    return {"max_abs": ranges[worst], "headroom": FP16_MAX / ranges[worst], "worst_layer": worst}


# -- fusion ---------------------------------------------------------------------------------------------------------


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv.eval(), bn.eval())


def fold_batchnorm(decoder: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d into it (in place); returns how many.

    Covers ``nn.Sequential`` runs (conv, bn) and EffViT's attention ``proj``/``norm`` and MBConv ``project``/``norm``.
    """
    folded = 0
    for module in list(decoder.modules()):
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = _fold_bn(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
                    folded += 1
        conv_name = getattr(module, "conv_before_norm", None)  # a module's own conv -> norm pair (EffViT blocks)
        if conv_name and isinstance(module.norm, nn.BatchNorm2d):
            setattr(module, conv_name, _fold_bn(getattr(module, conv_name), module.norm))
            module.norm = nn.Identity()
            folded += 1
    return folded


# -- optimize -------------------------------------------------------------------------------------------------------


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def optimize(
    decoder: nn.Module,
    backend: str = "eager",
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    compile_mode: str | None = None,
    fuse: bool = True,
    allow_fp16_overflow: bool = False,
    shape: tuple[int, ...] | None = None,
    num_frames: int | None = None,
) -> nn.Module:
    """The decoder, in place, ready for inference with ``backend`` (see the module docstring).

    Args:
        dtype: torch dtype or its name ("float16", "bfloat16", "float32"); None keeps the decoder's.
        compile_mode: ``torch.compile`` mode for backend "compile" (e.g. "max-autotune"); None is the default.
        fuse: fold BatchNorm into convs (exact up to float rounding).
        allow_fp16_overflow: keep float16 even where the fp16 analysis cannot rule out overflow.
        shape: latents shape ``auto`` measures at (default: one 512x512 image, or a 3-latent-frame 256x256 clip).
        num_frames: frames per clip of ``shape`` for SVD-style temporal decoders under ``auto``.

    Returns:
        The same module object (a wrapper of it for ``onnxruntime``/``openvino``): latents in, RGB in about [-1, 1]
        out, as before; ``.fastdecoders_backend`` says how.
    """
    if backend not in BACKENDS:
        raise FastDecodersError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if isinstance(dtype, str):
        if dtype not in ("float32", "float16", "bfloat16"):
            raise FastDecodersError(f"dtype: expected float32, float16 or bfloat16, got {dtype!r}")
        dtype = getattr(torch, dtype)
    if getattr(decoder, "fastdecoders_backend", None) not in (None, "eager") and backend != "eager":
        raise FastDecodersError(f"optimize: expected an eager decoder, got one on {decoder.fastdecoders_backend}")
    decoder.eval().requires_grad_(False)
    if fuse:
        fold_batchnorm(decoder)
    if dtype == torch.float16 and not allow_fp16_overflow:
        dtype = _safe_half(decoder)
    decoder.to(device=device, dtype=dtype)
    if backend == "auto":
        from fastdecoders.backends import choose_backend

        shape, num_frames = _auto_shape(decoder, shape, num_frames)
        choice = choose_backend(decoder, shape, num_frames=num_frames)
        decoder = optimize(decoder, backend=choice["backend"], fuse=False)
        decoder.fastdecoders_auto = choice
        return decoder
    if backend in ("onnxruntime", "openvino"):
        from fastdecoders.backends import runtime_decoder

        return runtime_decoder(decoder, backend)
    if backend in ("channels_last", "compile"):
        decoder.to(memory_format=torch.channels_last)
        decoder.register_forward_pre_hook(_to_channels_last)
    if backend == "compile":
        decoder.compile(mode=compile_mode)
    decoder.fastdecoders_backend = backend
    return decoder


def _auto_shape(decoder: nn.Module, shape: tuple[int, ...] | None, num_frames: int | None):
    """(latents shape, num_frames) for ``auto``: the given ones, or a 512x512 image / 256x256 clip of the family."""
    from fastdecoders.latents import get_latent_space

    frames = decoder.latent_ndim == 4 and decoder.decodes_clips  # forward takes frames + num_frames (SVD-style)
    if shape is not None:
        return tuple(shape), (num_frames or shape[0]) if frames else None
    space_name = getattr(decoder, "latent_space_name", None)
    f = get_latent_space(space_name).spatial_factor if space_name else 8
    c = decoder.latent_channels
    if decoder.latent_ndim == 5:  # forward takes clips
        return (1, c, 3, 256 // f, 256 // f), None
    if frames:
        return (4, c, 256 // f, 256 // f), 4
    return (1, c, 512 // f, 512 // f), None


def _safe_half(decoder: nn.Module) -> torch.dtype:
    """float16 where overflow was ruled out, else bfloat16 with a warning.

    Safe: the TAE layers (measured on the upstream weights with Kodak and saturated latents: >= 74x headroom, see the
    module docstring) and EffViT (its only wide sums, the linear attention's, run in float32).
    Everything else (the original diffusers VAEs: SDXL's overflows in fp16; taehv, whose published
    weights are not available here to measure) is not known to be safe.
    """
    if getattr(decoder, "fp16_safe", False):  # the decoder's own declaration (models/*.py)
        return torch.float16
    warnings.warn(
        f"{type(decoder).__name__}: fp16 overflow is not ruled out for it; using bfloat16 "
        "(pass allow_fp16_overflow=True to force float16)",
        stacklevel=3,
    )
    return torch.bfloat16
