"""Round-trip quality of a decoder on photos: encode with the family's encoder, decode, compare."""

from __future__ import annotations

import torch
from torch import nn

from fastdecoders.latents import to_01, to_pm1


def half_size(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (3, H/2, W/2) by 2×2 area averaging (deterministic, no resampling filter choice)."""
    return nn.functional.avg_pool2d(image[None], 2)[0]


@torch.inference_mode()
def roundtrip(decoder: nn.Module, encoder: nn.Module, image01: torch.Tensor) -> torch.Tensor:
    """(3, H, W) photo in [0, 1] -> its (3, H, W) reconstruction in [0, 1] (H, W multiples of the latent factor)."""
    param = next(decoder.parameters())
    latents = encoder(to_pm1(image01)[None].to(param.device, param.dtype))
    return to_01(decoder(latents).float())[0].cpu()


def roundtrip_scores(decoder: nn.Module, encoder: nn.Module, images01: list[torch.Tensor]) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over ``images01`` (each (3, H, W) in [0, 1]) after a round trip."""
    from fastdecoders.eval.metrics import psnr, ssim

    scores = {"psnr": [], "ssim": []}
    for image in images01:
        decoded = roundtrip(decoder, encoder, image)
        scores["psnr"].append(float(psnr(decoded[None], image[None])[0]))
        scores["ssim"].append(float(ssim(decoded[None], image[None])[0]))
    return {k: sum(v) / len(v) for k, v in scores.items()}
