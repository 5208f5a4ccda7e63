"""The PyTorch-side inference paths ``fastdecoders.fast.optimize`` and ``fastdecoders.backends`` both build on:
BatchNorm folding, the fp16 safety rule, and the ``channels_last`` / ``compile`` forms of a decoder (in place)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

#: backends that stay in PyTorch (the others run an ONNX export: ``fastdecoders.backends``)
TORCH_BACKENDS = ("eager", "channels_last", "compile")


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


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def torch_path(decoder: nn.Module, backend: str, compile_mode: str | None = None) -> nn.Module:
    """``decoder`` (in place) on a PyTorch ``backend``: eager as it is, ``channels_last`` NHWC weights and inputs,
    ``compile`` that plus ``torch.compile``; ``.fastdecoders_backend`` records it."""
    if backend in ("channels_last", "compile"):
        decoder.to(memory_format=torch.channels_last)
        decoder.register_forward_pre_hook(_to_channels_last)
    if backend == "compile":
        decoder.compile(mode=compile_mode)
    decoder.fastdecoders_backend = backend
    return decoder


def safe_half(decoder: nn.Module) -> torch.dtype:
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
