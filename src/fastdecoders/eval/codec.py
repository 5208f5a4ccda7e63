"""From pixels to latents and back, for every kind of decoder the registry holds.

Latents of one input take one of two forms, decided by the latent space:

* ``"frames"`` — (T, C, h, w): images (T = 1) and non-causal video spaces (SVD), encoded frame by frame by the
  family's TAE encoder or a diffusers VAE.
* ``"clip"`` — (1, C, t, h, w) NCTHW with t = ``space.latent_frames(T)``: causal video spaces (Wan, LTX, …), encoded
  by a diffusers video VAE (``--vae``), the encoder bundled in the decoder's file (TAEHV), or one from Python.

Decoders take either form through the decode protocol (``decoder.decode_latents``, ``fastdecoders.models.protocol``):
frame-wise decoders decode "frames" in chunks, decoders of whole clips get them at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import LatentSpace, to_01, to_pm1
from fastdecoders.models.diffusers_vae import open_vae
from fastdecoders.weights import load_encoder


def latent_form(space: LatentSpace) -> str:
    return "clip" if space.is_causal else "frames"


def module_fingerprint(module: nn.Module, extra: str = "") -> str:
    """12 hex digits naming a module's class, config and exact weights (cache keys; never a file name guess)."""
    digest = hashlib.sha256(f"{type(module).__name__}|{extra}".encode())
    config = getattr(module, "config", None)
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


# -- encoders -------------------------------------------------------------------------------------------------------


@dataclass
class Encoder:
    """Pixels -> diffusion-space latents of one latent space.

    ``fn`` takes (N, 3, H, W) in [-1, 1] and returns (N, C, h, w) for the ``"frames"`` form, or (1, 3, T, H, W)
    -> (1, C, t, h, w) for ``"clip"``. ``key`` names the encoder's weights for the latent cache.
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    space: LatentSpace
    key: str
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    batch_size: int = 8

    @property
    def form(self) -> str:
        return latent_form(self.space)

    @torch.inference_mode()
    def __call__(self, pixels01: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) in [0, 1] -> latents in this encoder's form (float32, CPU)."""
        x = to_pm1(pixels01).to(self.device, self.dtype)
        if self.form == "clip":
            self.space.latent_frames(x.shape[0])  # one clear error for a frame count the space cannot encode
            out = self.fn(x.permute(1, 0, 2, 3)[None])
        else:
            out = torch.cat([self.fn(chunk) for chunk in x.split(self.batch_size)])
        return out.float().cpu()


def tae_encoder(space: LatentSpace, weights_dir=None, device="cpu", dtype=torch.float32) -> Encoder:
    if space.tae_encoder is None:
        raise FastDecodersError(
            f"no tiny encoder makes {space.name} latents here; pass --vae PATH (a diffusers "
            f"{space.vae_class} folder) or evaluate pre-computed latents with --latents DIR"
        )
    module = load_encoder(space.tae_encoder, weights_dir, device=device, dtype=dtype)
    key = f"{space.tae_encoder}-{module_fingerprint(module)}"
    return Encoder(module, space, key, torch.device(device), dtype)


def diffusers_encoder(path: str | os.PathLike, space: LatentSpace, device="cpu", dtype=torch.float32) -> Encoder:
    """The encoder of a diffusers VAE folder of the space's class (``space.vae_class``), mean of its posterior,
    mapped to diffusion space with the space's scale/shift (or the checkpoint's own latents_mean/std)."""
    try:
        import diffusers
    except ImportError:
        raise FastDecodersError("--vae needs diffusers: pip install 'fastdecoders[diffusers]'") from None
    cls = getattr(diffusers, space.vae_class, None)
    if cls is None:
        raise FastDecodersError(f"this diffusers has no {space.vae_class} (needed for {space.name} latents)")
    try:
        vae = open_vae(path, space.vae_class).to(device=device, dtype=dtype).eval()
    except Exception as e:  # missing files, wrong class, unreadable weights: one line for the user
        raise FastDecodersError(f"--vae {path}: not a loadable {space.vae_class} folder ({type(e).__name__})") from None
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    stats = (mean, std) if mean is not None and std is not None else (None, None)

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = vae.encode(x)
        raw = out.latent_dist.mode() if hasattr(out, "latent_dist") else out.latent  # AutoencoderDC: no posterior
        return space.to_diffusion(raw, *stats)

    return Encoder(fn, space, f"vae-{space.vae_class}-{module_fingerprint(vae)}", torch.device(device), dtype)


def bundled_encoder(decoders: list[nn.Module], space: LatentSpace, device="cpu", dtype=torch.float32) -> Encoder | None:
    """The encoder inside a decoder's own weights file (TAEHV files hold both): the first of ``decoders`` that reads
    ``space`` and has one (``has_encoder``), or None. Its weights name it in the latent cache."""
    for decoder in decoders:
        if getattr(decoder, "latent_space_name", None) == space.name and getattr(decoder, "has_encoder", False):
            name = getattr(decoder, "registry_name", None) or type(decoder).__name__
            key = f"bundled-{name}-{module_fingerprint(decoder)}"
            return Encoder(decoder.encode, space, key, torch.device(device), dtype)
    return None


def custom_encoder(fn: Callable | Encoder, space: LatentSpace, device="cpu", dtype=torch.float32) -> Encoder:
    """An encoder given from Python (tests, other tools); its ``cache_key`` attribute names it in the cache."""
    if isinstance(fn, Encoder):
        return fn
    key = getattr(fn, "cache_key", None) or (
        module_fingerprint(fn) if isinstance(fn, nn.Module) else f"{getattr(fn, '__qualname__', 'fn')}"
    )
    return Encoder(fn, space, f"custom-{space.name}-{key}", torch.device(device), dtype)


# -- decoding -------------------------------------------------------------------------------------------------------


def to_decoder_input(latents: torch.Tensor, decoder: nn.Module, space: LatentSpace) -> torch.Tensor:
    """Latents in their form, checked against what ``decoder`` can read: causal clips need a clip decoder."""
    if latents.ndim == 5 and decoder.latent_ndim != 5:
        kind = "temporal" if decoder.decodes_clips else "image"
        raise FastDecodersError(
            f"{space.name} latents are whole clips (causal, x{space.temporal_factor} in time); "
            f"a frame-wise {kind} decoder cannot read them"
        )
    return latents


@torch.inference_mode()
def decode(decoder: nn.Module, latents: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Latents of one input ((T, C, h, w) frames of one clip, or a (1, C, t, h, w) clip) -> (T, 3, H, W) RGB in
    [0, 1], float32 on the CPU. Frame-wise decoders run in chunks of ``batch_size`` frames."""
    param = next(decoder.parameters())
    z = latents.to(param.device, param.dtype)
    if z.ndim == 5:
        video = decoder.decode_latents(z)
        if video.ndim != 5 or video.shape[1] != 3:
            raise FastDecodersError(f"video decoder returned shape {tuple(video.shape)}, expected (1, 3, T, H, W)")
        frames = video[0].permute(1, 0, 2, 3)
    elif decoder.decodes_clips:  # frames of one clip decoded together
        frames = decoder.decode_latents(z, num_frames=z.shape[0])
    else:
        frames = torch.cat([decoder.decode_latents(chunk) for chunk in z.split(batch_size)])
    return to_01(frames.float()).cpu()
