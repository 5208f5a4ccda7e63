"""Latent spaces: the one place that knows each VAE family's conventions, and every conversion between them.

Vocabulary used throughout fastdecoders:

* **raw latent** — what the original VAE's encoder emits and its ``decode`` takes.
* **diffusion-space latent** — what the diffusion model sees and produces: the raw latent after the family's
  scale/shift (``(raw - shift) * scale``) or mean/std (``(raw - mean) / std``). All fastdecoders decoders take this.
* **images** — RGB in [-1, 1] (diffusers) unless a name says ``01`` ([0, 1], PIL/TAESD).

Numbers come from diffusers' VAE classes and the published ``vae/config.json`` of each model (cited per entry);
``tests/test_latents.py`` builds each diffusers class and checks channels and factors agree.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch

from fastdecoders.errors import FastDecodersError


@dataclass(frozen=True)
class LatentSpace:
    name: str
    description: str
    channels: int
    #: pixels per latent along height and width.
    spatial_factor: int
    #: pixel frames per latent frame (1 for images and for SVD, which decodes frame by frame).
    temporal_factor: int = 1
    #: "NCHW" (images), "NCTHW" (diffusers video VAEs) or "NTCHW" (SVD's pipeline latents, flattened to frames).
    layout: str = "NCHW"
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    #: per-channel statistics for families normalised by mean/std instead of scale/shift.
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    #: value range of the original VAE decoder's output.
    decoder_range: tuple[float, float] = (-1.0, 1.0)
    #: the diffusers class of the original VAE, and the hub id of a published checkpoint of it.
    vae_class: str = "AutoencoderKL"
    vae_hub_id: str | None = None
    #: the tiny encoder that makes diffusion-space latents of photos here (an upstream weights-file stem).
    tae_encoder: str | None = None
    #: a caveat a user should read (e.g. per-checkpoint statistics, unverified relations).
    note: str = ""
    #: latent frames the VAE decodes as one unit, each with its own first-frame arithmetic (MiniMax H3: 5); None:
    #: the whole clip is one unit.
    frame_chunk: int | None = None
    #: latent frames the VAE's encoder drops from the end of a clip (MiniMax H3: 3 of its last 17-frame chunk).
    tail_latents: int = 0
    #: CogVideoX: an even latent frame count decodes to ``temporal_factor·t`` frames (the first frame is not special).
    even_clips_uncut: bool = False
    #: (temporal, spatial) patch of the token packing the diffusers pipeline keeps its latents in during sampling
    #: ((B, tokens, C·pt·p·p); Flux: (1, 2), LTX: (1, 1)); None when they stay in ``layout``. See ``unpack_tokens``.
    pipeline_packing: tuple[int, int] | None = None

    @property
    def is_video(self) -> bool:
        return self.layout != "NCHW"

    @property
    def is_causal(self) -> bool:
        """Causal video VAEs: the first latent frame is one pixel frame, each later one is ``temporal_factor``."""
        return self.temporal_factor > 1

    # -- frame arithmetic -------------------------------------------------------------------------------------------

    def frames_dropped(self, latent_frames: int) -> int:
        """Frames the VAE does not emit at the start of each decoded unit, out of ``temporal_factor`` per latent frame.

        Frame-per-latent-frame decoders (TAEHV) make ``temporal_factor`` frames of every latent frame and drop this many
        at the start of each unit: ``temporal_factor − 1`` for causal VAEs (their first latent frame is one frame),
        none for CogVideoX clips of an even latent count, none for image and frame-wise spaces.
        """
        if not self.is_causal or (self.even_clips_uncut and latent_frames % 2 == 0):
            return 0
        return self.temporal_factor - 1

    def frame_rule(self) -> str:
        """The valid latent frame counts and what they decode to, in words (for error messages and docs)."""
        k = self.temporal_factor
        if not self.is_causal:
            return "any t >= 1 latent frames, one frame each"
        if self.frame_chunk:
            c, d = self.frame_chunk, self.tail_latents
            return (f"t = {c}·n − {d} latent frames (units of {c}, the last {d} dropped by the encoder), "
                    f"each unit {c * k - (k - 1)} frames")
        if self.even_clips_uncut:
            return f"t latent frames decode to {k}·t frames for even t, 1 + {k}·(t − 1) for odd t"
        return f"t >= 1 latent frames decode to 1 + {k}·(t − 1) frames"

    def check_latent_frames(self, latent_frames: int) -> None:
        """One clear error (naming the rule) for a latent frame count this space's VAE never makes."""
        bad = latent_frames < 1
        if self.frame_chunk and not bad:
            bad = (latent_frames + self.tail_latents) % self.frame_chunk != 0
        if bad:
            raise FastDecodersError(f"{self.name}: {latent_frames} latent frames; expected {self.frame_rule()}")

    def next_latent_frames(self, at_least: int = 1) -> int:
        """The smallest latent frame count >= ``at_least`` that this space's VAE makes (H3: 5·n − 3; others: any)."""
        t = max(1, at_least)
        while self.frame_chunk and (t + self.tail_latents) % self.frame_chunk:
            t += 1
        return t

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames decoded from ``latent_frames`` (Wan: 1 + 4·(t − 1); CogVideoX: 4·t for even t)."""
        self.check_latent_frames(latent_frames)
        if not self.is_causal:
            return latent_frames
        k, drop = self.temporal_factor, self.frames_dropped(latent_frames)
        unit = self.frame_chunk or latent_frames
        full, rest = divmod(latent_frames, unit)
        return full * (unit * k - drop) + (rest * k - drop if rest else 0)

    def latent_frames(self, pixel_frames: int) -> int:
        """Latent frames that decode to ``pixel_frames`` (the inverse of ``pixel_frames``; one error if none does)."""
        if self.is_causal:
            for t in range(1, pixel_frames + 1):  # pixel_frames grows with t: stop at the first count past it
                if self.frame_chunk and (t + self.tail_latents) % self.frame_chunk:
                    continue
                if self.pixel_frames(t) >= pixel_frames:
                    if self.pixel_frames(t) == pixel_frames:
                        return t
                    break
        elif pixel_frames >= 1:
            return pixel_frames
        rule = self.frame_rule()
        raise FastDecodersError(f"{self.name}: no latent frame count decodes to {pixel_frames} frames; {rule}")

    def pixel_size(self, latent_height: int, latent_width: int) -> tuple[int, int]:
        return latent_height * self.spatial_factor, latent_width * self.spatial_factor

    # -- raw <-> diffusion space ------------------------------------------------------------------------------------

    def _stats(self, latents: torch.Tensor, mean=None, std=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (shift, scale) as tensors broadcastable over ``latents`` (channel axis from the layout)."""
        mean = self.latents_mean if mean is None else mean
        std = self.latents_std if std is None else std
        if mean is not None and std is not None:
            shift = torch.as_tensor(mean, dtype=latents.dtype, device=latents.device)
            scale = 1 / torch.as_tensor(std, dtype=latents.dtype, device=latents.device)
        else:
            shift = torch.tensor(self.shift_factor, dtype=latents.dtype, device=latents.device)
            scale = torch.tensor(self.scaling_factor, dtype=latents.dtype, device=latents.device)
        channel_axis = 2 if self.layout == "NTCHW" and latents.ndim == 5 else 1
        shape = [1] * latents.ndim
        if shift.numel() > 1:
            shape[channel_axis] = shift.numel()
        return shift.reshape(shape), scale.reshape(shape)

    def to_diffusion(self, raw: torch.Tensor, mean=None, std=None) -> torch.Tensor:
        """Raw VAE latent -> diffusion-space latent. ``mean``/``std`` override per-checkpoint statistics (LTX)."""
        shift, scale = self._stats(raw, mean, std)
        return (raw - shift) * scale

    def to_raw(self, latents: torch.Tensor, mean=None, std=None) -> torch.Tensor:
        """Diffusion-space latent -> raw VAE latent (what the original ``vae.decode`` takes)."""
        shift, scale = self._stats(latents, mean, std)
        return latents / scale + shift

    # -- checks -----------------------------------------------------------------------------------------------------

    def check_latents(self, latents: torch.Tensor, what: str = "latents") -> None:
        """One clear error for a tensor that cannot be this space's latents (rank, channels, dtype, NaN/Inf)."""
        if not isinstance(latents, torch.Tensor):
            raise FastDecodersError(f"{what}: expected a torch.Tensor, got {type(latents).__name__}")
        want_ndim = 5 if self.is_video else 4
        if latents.ndim != want_ndim:
            raise FastDecodersError(
                f"{what}: {self.name} latents are {self.layout} ({want_ndim}-d), got shape {tuple(latents.shape)}"
            )
        channels = latents.shape[2 if self.layout == "NTCHW" else 1]
        if channels != self.channels:
            raise FastDecodersError(
                f"{what}: {self.name} latents have {self.channels} channels ({self.layout}), got {channels} "
                f"in shape {tuple(latents.shape)}"
            )
        if not latents.is_floating_point():
            raise FastDecodersError(f"{what}: expected a floating-point tensor, got {latents.dtype}")
        if not torch.isfinite(latents).all():
            raise FastDecodersError(f"{what}: contains NaN or Inf values")


# -- value range and layout conversions (the only place they are written) ------------------------------------------


def to_01(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return images.add(1).div(2).clamp(0, 1)


def to_pm1(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return images.mul(2).sub(1)


def ntchw_to_ncthw(video: torch.Tensor) -> torch.Tensor:
    return video.permute(0, 2, 1, 3, 4)


def ncthw_to_ntchw(video: torch.Tensor) -> torch.Tensor:
    return video.permute(0, 2, 1, 3, 4)


def frames_to_video(frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B·T, C, H, W) -> (B, C, T, H, W)."""
    if frames.shape[0] % num_frames:
        raise FastDecodersError(f"{frames.shape[0]} frames do not split into clips of {num_frames}")
    return ntchw_to_ncthw(frames.unflatten(0, (-1, num_frames)))


def video_to_frames(video: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B·T, C, H, W)."""
    return ncthw_to_ntchw(video).flatten(0, 1)


def unpack_tokens(
    tokens: torch.Tensor, height: int, width: int, packing: tuple[int, int], frames: int | None = None
) -> torch.Tensor:
    """A pipeline's packed latents (B, tokens, C·pt·p·p) -> (B, C, height, width), or (B, C, frames, height, width)
    when ``frames`` is given; ``height``/``width``/``frames`` count latent cells, ``packing`` = (pt, p). The token
    order is diffusers' (FluxPipeline/LTXPipeline ``_pack_latents``): frame, row, column; features C, pt, p, p."""
    pt, p = packing
    t = 1 if frames is None else frames
    cells = (t // pt) * (height // p) * (width // p)
    uneven = t % pt or height % p or width % p
    if tokens.ndim != 3 or tokens.shape[1] != cells or tokens.shape[2] % (pt * p * p) or uneven:
        raise FastDecodersError(
            f"packed latents: expected (B, {cells}, C·{pt * p * p}) tokens for {t}x{height}x{width} latent cells, "
            f"got {tuple(tokens.shape)}"
        )
    b = tokens.shape[0]
    x = tokens.reshape(b, t // pt, height // p, width // p, -1, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
    video = x.reshape(b, x.shape[1], t, height, width)
    return video if frames is not None else video[:, :, 0]


# -- the families ---------------------------------------------------------------------------------------------------

# Wan 2.1: diffusers AutoencoderKLWan defaults == Wan-AI/Wan2.1-T2V-1.3B-Diffusers vae/config.json.
_WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)  # fmt: skip
_WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)  # fmt: skip
# Wan 2.2 (TI2V-5B): Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json (z_dim 48, patch_size 2, stride 4x16x16).
_WAN22_MEAN = (-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
               0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
               -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
               -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681,
               -0.0667)  # fmt: skip
_WAN22_STD = (0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
              0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
              0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
              0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468,
              0.7744)  # fmt: skip

LATENT_SPACES: dict[str, LatentSpace] = {
    s.name: s
    for s in (
        # AutoencoderKL default scaling_factor; stable-diffusion-v1-5 vae/config.json (4 ch, 4 blocks -> f8).
        LatentSpace("sd1", "Stable Diffusion 1.x / 2.x", 4, 8, scaling_factor=0.18215,
                    vae_hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5", tae_encoder="taesd_encoder"),
        # stabilityai/sdxl-vae config.json: scaling_factor 0.13025.
        LatentSpace("sdxl", "Stable Diffusion XL", 4, 8, scaling_factor=0.13025,
                    vae_hub_id="stabilityai/sdxl-vae", tae_encoder="taesdxl_encoder"),
        # stabilityai/stable-diffusion-3-medium-diffusers vae/config.json: 16 ch, scaling 1.5305, shift 0.0609.
        LatentSpace("sd3", "Stable Diffusion 3 / 3.5", 16, 8, scaling_factor=1.5305, shift_factor=0.0609,
                    vae_hub_id="stabilityai/stable-diffusion-3-medium-diffusers", tae_encoder="taesd3_encoder"),
        # black-forest-labs/FLUX.1-dev vae/config.json: 16 ch, scaling 0.3611, shift 0.1159.
        LatentSpace("flux1", "FLUX.1 (also HiDream, Z-Image)", 16, 8, scaling_factor=0.3611, shift_factor=0.1159,
                    vae_hub_id="black-forest-labs/FLUX.1-dev", tae_encoder="taef1_encoder",
                    pipeline_packing=(1, 2)),
        # diffusers AutoencoderKLFlux2: 32 ch at f8; the Flux2 pipeline patchifies 2x2 and normalises with the VAE's
        # BatchNorm running stats itself, then calls vae.decode with the raw 32-ch latent.
        LatentSpace("flux2", "FLUX.2", 32, 8, vae_class="AutoencoderKLFlux2",
                    vae_hub_id="black-forest-labs/FLUX.2-dev", tae_encoder="taef2_encoder",
                    note="TAEF2 latents are taken as the raw 32-ch latent vae.decode receives; this relation is "
                         "not verified here (no FLUX.2 VAE weights available)"),
        # stabilityai/stable-video-diffusion-img2vid-xt vae/config.json (AutoencoderKLTemporalDecoder): 4 ch,
        # scaling 0.18215; the pipeline keeps latents as (B, T, C, h, w) and decodes them frame-wise.
        LatentSpace("svd", "Stable Video Diffusion", 4, 8, layout="NTCHW", scaling_factor=0.18215,
                    vae_class="AutoencoderKLTemporalDecoder",
                    vae_hub_id="stabilityai/stable-video-diffusion-img2vid-xt", tae_encoder="taesd_encoder"),
        # AutoencoderKLWan defaults: z_dim 16, scale_factor_temporal 4, scale_factor_spatial 8, latents_mean/std.
        LatentSpace("wan2.1", "Wan 2.1 (also Wan 2.2-14B, Qwen-Image)", 16, 8, temporal_factor=4, layout="NCTHW",
                    latents_mean=_WAN21_MEAN, latents_std=_WAN21_STD, vae_class="AutoencoderKLWan",
                    vae_hub_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
        # Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json: z_dim 48, patch_size 2, scale_factor_spatial 16.
        LatentSpace("wan2.2", "Wan 2.2 TI2V-5B", 48, 16, temporal_factor=4, layout="NCTHW",
                    latents_mean=_WAN22_MEAN, latents_std=_WAN22_STD, vae_class="AutoencoderKLWan",
                    vae_hub_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers"),
        # AutoencoderKLLTXVideo: 128 ch, patch_size 4 x three spatio-temporal x2 stages -> f32 spatial, x8 temporal;
        # latents_mean/std are buffers stored in each checkpoint (the pipeline reads vae.latents_mean/std).
        LatentSpace("ltx-video", "LTX-Video 0.9.x", 128, 32, temporal_factor=8, layout="NCTHW",
                    vae_class="AutoencoderKLLTXVideo", vae_hub_id="Lightricks/LTX-Video", pipeline_packing=(1, 1),
                    note="latents_mean/std live in each checkpoint's buffers; pass them as mean=/std= "
                         "(the diffusers adapter reads them from the pipeline's VAE)"),
        # hunyuanvideo-community/HunyuanVideo vae/config.json: 16 ch, scaling 0.476986, f8, x4 temporal.
        LatentSpace("hunyuan-video", "HunyuanVideo", 16, 8, temporal_factor=4, layout="NCTHW",
                    scaling_factor=0.476986, vae_class="AutoencoderKLHunyuanVideo",
                    vae_hub_id="hunyuanvideo-community/HunyuanVideo"),
        # THUDM/CogVideoX-2b vae/config.json: 16 ch, scaling 1.15258426, x4 temporal (CogVideoX-5b uses 0.7).
        # Its frame arithmetic: CogVideoXUpsample3D (diffusers) keeps the first frame apart only when a decoded batch
        # has an odd frame count; AutoencoderKLCogVideoX._decode batches latents in twos (the first takes the odd one).
        LatentSpace("cogvideox", "CogVideoX-2b", 16, 8, temporal_factor=4, layout="NCTHW",
                    scaling_factor=1.15258426, vae_class="AutoencoderKLCogVideoX", vae_hub_id="THUDM/CogVideoX-2b",
                    even_clips_uncut=True,
                    note="CogVideoX-5b checkpoints use scaling_factor 0.7; the adapter reads the pipeline's value"),
        # diffusers AutoencoderKLHunyuanVideo15 defaults: latent_channels 32, spatial_compression_ratio 16,
        # temporal_compression_ratio 4, scaling_factor 1.03682 (the pipeline divides by it before vae.decode).
        LatentSpace("hunyuan-video-1.5", "HunyuanVideo 1.5", 32, 16, temporal_factor=4, layout="NCTHW",
                    scaling_factor=1.03682, vae_class="AutoencoderKLHunyuanVideo15",
                    vae_hub_id="hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v"),
        # hpcaitech/Open-Sora configs/opensora-v1-3/inference/*.py: vae OpenSoraVAE_V1_3, z_channels=16,
        # micro_frame_size=17 (4x temporal, 8x spatial, causal). No diffusers class.
        LatentSpace("opensora-1.3", "Open-Sora 1.3", 16, 8, temporal_factor=4, layout="NCTHW",
                    vae_class="OpenSoraVAE_V1_3", vae_hub_id="hpcai-tech/OpenSora-VAE-v1.3",
                    note="Open-Sora normalises latents with its own 'video' statistics (opensora/models/vae); "
                         "they are not reproduced here, so latents are taken as the diffusion model's"),
        # diffusers AutoencoderKLLTX2Video: latent_channels 128, patch_size 4 x three spatio-temporal x2 stages
        # (f32, x8 in time); latents_mean/std are persistent buffers of each checkpoint, as for LTX-Video.
        LatentSpace("ltx-2", "LTX-2 (taeltx2_3: LTX-2.3)", 128, 32, temporal_factor=8, layout="NCTHW",
                    vae_class="AutoencoderKLLTX2Video", vae_hub_id="Lightricks/LTX-2",
                    note="latents_mean/std live in each checkpoint's buffers (the diffusers adapter reads them)"),
        # diffusers AutoencoderKLQwenImage: Wan 2.1's VAE layout and its latents_mean/std defaults; the pipeline decodes
        # (B, 16, 1, h, w) single-frame clips.
        LatentSpace("qwen-image", "Qwen-Image", 16, 8, temporal_factor=4, layout="NCTHW",
                    latents_mean=_WAN21_MEAN, latents_std=_WAN21_STD, vae_class="AutoencoderKLQwenImage",
                    vae_hub_id="Qwen/Qwen-Image"),
        # diffusers AutoencoderKLMiniMaxH3: latent_channels 24, spatial factors (2,2,2,2,1,1) = 16, temporal
        # (1,2,2,1,1,1) = 4, clip_length 17 (3 leading pad frames -> 5 latents each), token_drop 3; per-checkpoint
        # mean/std.
        LatentSpace("minimax-h3", "MiniMax H3", 24, 16, temporal_factor=4, layout="NCTHW",
                    vae_class="AutoencoderKLMiniMaxH3", frame_chunk=5, tail_latents=3,
                    note="latents_mean/std are per checkpoint (config defaults 0/1); the adapter reads the pipeline's"),
        # mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers config.json: 32 ch, f32, scaling 0.41407.
        LatentSpace("sana", "Sana (DC-AE f32c32)", 32, 32, scaling_factor=0.41407, vae_class="AutoencoderDC",
                    vae_hub_id="mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers"),
    )
}  # fmt: skip


def get_latent_space(name: str | LatentSpace) -> LatentSpace:
    if isinstance(name, LatentSpace):
        return name
    try:
        return LATENT_SPACES[name]
    except KeyError:
        close = difflib.get_close_matches(name, LATENT_SPACES, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise FastDecodersError(f"unknown latent space {name!r}{hint}; known: {', '.join(LATENT_SPACES)}") from None
