"""Round-trip quality of a decoder on photos: encode with the family's encoder, decode, compare."""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
from torch import nn

from fastdecoders import tiling
from fastdecoders.errors import FastDecodersError, require_finite
from fastdecoders.eval.metrics import psnr, ssim
from fastdecoders.io import format_bytes
from fastdecoders.latents import to_01, to_pm1
from fastdecoders.tiling import AUTO_BUDGET_FRACTION, measure_peak_bytes, memory_budget, rough_peak_bytes


def half_size(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (3, H/2, W/2) by 2×2 area averaging (deterministic, no resampling filter choice)."""
    return nn.functional.avg_pool2d(image[None], 2)[0]


#: side (pixels) of the crop on which the encoder's memory per pixel is measured
ENCODER_PROBE = 64
_ENCODER_PROBES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, float]] = weakref.WeakKeyDictionary()


def check_encoder_fits(encoder: nn.Module, images: torch.Tensor, max_memory_bytes: int | None = None) -> None:
    """One clear error, before encoding, when ``encoder(images)`` ((N, 3, H, W) in [-1, 1]) would not fit the budget
    (default: the same share of free memory that automatic tiling plans with). The encoder is not tiled; measured on
    a small crop (cheap upper estimate first, then the measured peak), linear in area."""
    device = images.device
    budget = max_memory_bytes or int(AUTO_BUDGET_FRACTION.get(device.type, 0.5) * memory_budget(device))
    probe = images[:1, :, :ENCODER_PROBE, :ENCODER_PROBE]
    pixels = images.shape[0] * images.shape[-2] * images.shape[-1]
    # bytes per pixel, measured once per encoder, device and dtype (a probe costs about half an encode on the CPU)
    cache = _ENCODER_PROBES.setdefault(encoder, {})
    for precise, measure in enumerate(
        (lambda fn: rough_peak_bytes(fn, encoder), lambda fn: measure_peak_bytes(fn, device))
    ):
        key = (str(device), images.dtype, bool(precise))
        if key not in cache:
            cache[key] = measure(lambda: encoder(probe))[0] / (probe.shape[-2] * probe.shape[-1])
        peak = cache[key] * pixels
        if peak <= budget:
            return
    h, w = images.shape[-2:]
    raise FastDecodersError(f"encoding a {w}x{h} photo needs about {format_bytes(peak)}, more than the "
                            f"{format_bytes(budget)} budget (the encoder is not tiled): resize it first "
                            f"(roundtrip --size N)")  # fmt: skip


@torch.inference_mode()
def roundtrip(
    decoder: nn.Module, encoder: nn.Module, image01: torch.Tensor, max_memory_bytes: int | None = None
) -> torch.Tensor:
    """(3, H, W) photo in [0, 1] -> its (3, H, W) reconstruction in [0, 1] (H, W multiples of the latent factor).

    The decode is tiled automatically like ``fastdecoders decode`` (``decode_tiled(tile="auto")``) within
    ``max_memory_bytes`` (default: a share of free memory); a photo too large to encode is one clear error, and so is
    a non-finite decoder output.
    """
    param = next(decoder.parameters())
    images = to_pm1(image01)[None].to(param.device, param.dtype)
    check_encoder_fits(encoder, images, max_memory_bytes)
    latents = encoder(images)
    # through the module attribute: tests spy on tiling.decode_tiled
    decoded, _ = tiling.decode_tiled(decoder, latents, tile="auto", max_memory_bytes=max_memory_bytes)
    require_finite(decoded, f"{getattr(decoder, 'registry_name', None) or 'the decoder'}'s output")
    return to_01(decoded.float())[0].cpu()


def roundtrip_scores(decoder: nn.Module, encoder: nn.Module, images01: list[torch.Tensor]) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over ``images01`` (each (3, H, W) in [0, 1]) after a round trip."""
    scores = {"psnr": [], "ssim": []}
    for image in images01:
        decoded = roundtrip(decoder, encoder, image)
        scores["psnr"].append(float(psnr(decoded[None], image[None])[0]))
        scores["ssim"].append(float(ssim(decoded[None], image[None])[0]))
    return {k: sum(v) / len(v) for k, v in scores.items()}


#: scikit-image's sample photos: the round trip's and the export check's default inputs
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")


def sample_photo_paths() -> list[Path]:
    """scikit-image's sample photos that are installed (one error if scikit-image is not)."""
    try:
        import skimage
    except ImportError:
        raise FastDecodersError("no --images given and scikit-image (the sample photos) is not installed") from None
    folder = Path(skimage.__file__).parent / "data"
    return [folder / name for name in SAMPLE_PHOTOS if (folder / name).is_file()]
