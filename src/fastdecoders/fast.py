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

from typing import Any

import torch
from torch import nn

from fastdecoders.backends import BACKENDS, choose_backend, runtime_decoder
from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import get_latent_space
from fastdecoders.models.layers import TAEBlock
from fastdecoders.torch_paths import fold_batchnorm, safe_half, torch_path

__all__ = ["BACKENDS", "FP16_MAX", "activation_ranges", "fold_batchnorm", "fp16_report", "optimize"]

FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504


# -- fp16 range analysis --------------------------------------------------------------------------------------------


def activation_ranges(decoder: nn.Module, latents: torch.Tensor) -> dict[str, float]:
    """Max |output| of every leaf module and residual block while decoding ``latents`` (run in float32)."""
    ranges: dict[str, float] = {}
    hooks = []
    for name, module in decoder.named_modules():
        if name and (not list(module.children()) or isinstance(module, TAEBlock)):

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


# -- optimize -------------------------------------------------------------------------------------------------------


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
        dtype = safe_half(decoder)
    decoder.to(device=device, dtype=dtype)
    if backend == "auto":
        shape, num_frames = _auto_shape(decoder, shape, num_frames)
        choice = choose_backend(decoder, shape, num_frames=num_frames)
        decoder = optimize(decoder, backend=choice["backend"], fuse=False)
        decoder.fastdecoders_auto = choice
        return decoder
    if backend in ("onnxruntime", "openvino"):
        return runtime_decoder(decoder, backend)
    return torch_path(decoder, backend, compile_mode)


def _auto_shape(decoder: nn.Module, shape: tuple[int, ...] | None, num_frames: int | None):
    """(latents shape, num_frames) for ``auto``: the given ones, or a 512x512 image / 256x256 clip of the family."""
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


