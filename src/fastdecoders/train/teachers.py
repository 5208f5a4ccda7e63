"""The teacher: what makes the training latents (an encoder) and, optionally, the distillation targets (a decoder).

Two kinds, both mapped to one interface (images in [-1, 1], diffusion-space latents):

* a TAE pair from weights files: ``load_encoder("taesdxl_encoder")`` and ``load_decoder("taesdxl")``;
* a diffusers VAE (folder or hub id) of the latent space's class (``AutoencoderKL`` & co.): the posterior mean,
  mapped with ``LatentSpace.to_diffusion``; decoding maps back with ``to_raw``.

Frame-wise spaces (images, SVD) encode and decode (N, 3, H, W) batches of frames; causal video spaces (Wan, LTX …)
encode and decode whole clips (1, 3, T, H, W) <-> (1, C, t, h, w).

``check_spaces`` decides, from names alone (nothing loaded), whether teacher and student share a latent space.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import LATENT_SPACES, LatentSpace, get_latent_space, to_pm1
from fastdecoders.models.diffusers_vae import open_vae
from fastdecoders.registry import get_spec, is_registered
from fastdecoders.train.config import StudentConfig, TeacherConfig
from fastdecoders.weights import TAE_ENCODERS, load_decoder, load_encoder


def spaces_compatible(a: LatentSpace, b: LatentSpace) -> bool:
    """Same space, or the same numbers frame by frame (SVD's latents are SD1's, per frame)."""
    if a.name == b.name:
        return True
    numbers = lambda s: (s.channels, s.spatial_factor, s.temporal_factor, s.scaling_factor, s.shift_factor,  # noqa: E731
                         s.latents_mean, s.latents_std)  # fmt: skip
    return numbers(a) == numbers(b) and not (a.is_causal or b.is_causal)


def _encoder_spaces(stem: str) -> list[str]:
    return [name for name, space in LATENT_SPACES.items() if space.tae_encoder == stem]


def _decoder_space_without_loading(name: str) -> str | None:
    """The latent space a registered teacher decoder reads; None for files and hub ids (known once loaded)."""
    return get_spec(name).latents if is_registered(name) else None


def teacher_space(cfg: TeacherConfig) -> LatentSpace:
    """The latent space the teacher's encoder makes, from the config alone."""
    if cfg.encoder is not None and cfg.encoder not in TAE_ENCODERS:
        known = ", ".join(TAE_ENCODERS)
        raise FastDecodersError(f"teacher.encoder: expected a TAE encoder ({known}), got {cfg.encoder!r}")
    if cfg.latents is not None:
        space = get_latent_space(cfg.latents)
        if cfg.encoder is not None and cfg.encoder not in (
            s.tae_encoder for s in LATENT_SPACES.values() if spaces_compatible(s, space)
        ):
            raise FastDecodersError(
                f"teacher.encoder {cfg.encoder} makes {'/'.join(_encoder_spaces(cfg.encoder))} latents, "
                f"not teacher.latents={space.name}"
            )
        return space
    if cfg.decoder is not None and (name := _decoder_space_without_loading(cfg.decoder)) is not None:
        return get_latent_space(name)
    if cfg.encoder is not None:
        spaces = _encoder_spaces(cfg.encoder)
        if len(spaces) == 1:
            return get_latent_space(spaces[0])
        raise FastDecodersError(
            f"teacher.encoder {cfg.encoder} makes latents of {', '.join(spaces)}; say which with teacher.latents"
        )
    raise FastDecodersError(f"teacher.vae {cfg.vae}: say which latent space it makes with teacher.latents")


def student_space(cfg: StudentConfig) -> LatentSpace | None:
    """The latent space a registered student reads; None when only known after loading ``student.init``."""
    return None if cfg.name is None else get_latent_space(get_spec(cfg.name).latents)


def check_spaces(teacher: TeacherConfig, student: StudentConfig) -> LatentSpace:
    """The shared latent space, or one clear error naming both sides."""
    t, s = teacher_space(teacher), student_space(student)
    if s is not None and not spaces_compatible(t, s):
        source = teacher.encoder or teacher.vae
        raise FastDecodersError(
            f"teacher/student latent mismatch: the teacher ({source}) makes {t.name} latents ({t.channels} ch) but "
            f"student {student.name} reads {s.name} latents ({s.channels} ch)"
        )
    if teacher.decoder is not None and (name := _decoder_space_without_loading(teacher.decoder)) is not None:
        if not spaces_compatible(get_latent_space(name), t):
            raise FastDecodersError(
                f"teacher.decoder {teacher.decoder} reads {name} latents but the teacher encoder makes {t.name} latents"
            )
    return t if s is None else s


# -- the loaded teacher ---------------------------------------------------------------------------------------------


@dataclass
class Teacher:
    """Encode photos/clips and decode latents; ``decode`` is None when there is no teacher decoder."""

    space: LatentSpace
    encoder: nn.Module | None
    decoder: nn.Module | None
    #: a diffusers VAE (encoder and decoder) when the teacher is one.
    vae: nn.Module | None
    description: str
    #: identifies weights and settings, for the latent cache's key.
    fingerprint: str
    device: torch.device
    #: per-checkpoint statistics of a diffusers VAE (latents_mean/std), else None.
    stats: tuple | None = None

    @property
    def has_decoder(self) -> bool:
        return self.decoder is not None or self.vae is not None

    @property
    def clip_wise(self) -> bool:
        """True for causal video spaces: whole clips are encoded and decoded at once."""
        return self.space.is_causal

    @torch.inference_mode()
    def encode(self, pixels01: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) frames in [0, 1] -> (N, C, H/f, W/f) latents (frame-wise spaces), or a (T, 3, H, W) clip ->
        (t, C, h, w) (causal spaces: the clip is one sample). float32 on the CPU."""
        x = to_pm1(pixels01.to(self.device, torch.float32))
        if self.clip_wise:
            x = x.permute(1, 0, 2, 3)[None]  # (T, 3, H, W) -> (1, 3, T, H, W)
        if self.vae is not None:
            out = self.vae.encode(x)
            raw = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latent  # AutoencoderDC: no posterior
            z = self.space.to_diffusion(raw, *(self.stats or (None, None)))
        else:
            z = self.encoder(x)
        if self.clip_wise:
            z = z[0].permute(1, 0, 2, 3)  # (1, C, t, h, w) -> (t, C, h, w)
        return z.float().cpu()

    @property
    def decoder_module(self) -> nn.Module | None:
        """The module whose ``named_modules()`` feature alignment refers to: the TAE decoder, or the diffusers VAE."""
        return self.vae if self.vae is not None else self.decoder

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse layout of ``encode``: latents -> frames (N or T, 3, H, W) in [-1, 1] (unclamped), float32, CPU."""
        return self._decode(latents.to(self.device, torch.float32)).float().cpu()

    @torch.no_grad()
    def decode_live(self, latents: torch.Tensor) -> torch.Tensor:
        """``decode`` on the device, in the caller's dtype/autocast and without the CPU copy (feature alignment runs
        it every step; its hooks see the activations). Same layouts as ``decode``."""
        return self._decode(latents.to(self.device))

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        frames = z.shape[0]
        if self.clip_wise:
            z = z.permute(1, 0, 2, 3)[None]
        if self.vae is not None:
            raw = self.space.to_raw(z, *(self.stats or (None, None)))
            kwargs = {"num_frames": frames} if type(self.vae).__name__ == "AutoencoderKLTemporalDecoder" else {}
            x = self.vae.decode(raw, **kwargs).sample
        else:  # the decode protocol: frames (+ frames per clip) or NCTHW clips, as the decoder needs them
            x = self.decoder.decode_latents(z, num_frames=frames)
        if self.clip_wise:
            x = x[0].permute(1, 0, 2, 3)
        return x


def _file_identity(path: str | os.PathLike) -> str:
    p = Path(path)
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def _module_digest(module: nn.Module) -> str:
    h = hashlib.sha1()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def load_teacher(cfg: TeacherConfig, device: torch.device) -> Teacher:
    """Load the teacher's weights (after ``check_spaces`` passed); one clear error for anything missing."""
    space = teacher_space(cfg)
    if cfg.vae is not None:
        vae, stats = _load_vae(cfg, space, device)
        return Teacher(space, None, None, vae, f"diffusers {type(vae).__name__} {cfg.vae}",
                       f"vae:{_module_digest(vae)}", device, stats)  # fmt: skip
    encoder = load_encoder(cfg.encoder, cfg.weights_dir, device=device, dtype=torch.float32)
    decoder = None
    if cfg.decoder is not None:
        decoder = load_decoder(cfg.decoder, latents=cfg.latents, weights_dir=cfg.weights_dir, device=device,
                               dtype=torch.float32)  # fmt: skip
        if not spaces_compatible(get_latent_space(decoder.latent_space_name), space):
            raise FastDecodersError(
                f"teacher.decoder {cfg.decoder} reads {decoder.latent_space_name} latents but the teacher encoder "
                f"makes {space.name} latents"
            )
    description = f"{cfg.encoder} + {cfg.decoder}" if decoder is not None else f"{cfg.encoder} (no decoder)"
    fingerprint = f"tae:{_module_digest(encoder)}:{_module_digest(decoder) if decoder is not None else '-'}"
    return Teacher(space, encoder, decoder, None, description, fingerprint, device)


def _load_vae(cfg: TeacherConfig, space: LatentSpace, device: torch.device) -> tuple[nn.Module, tuple | None]:
    try:
        import diffusers
    except ImportError:
        raise FastDecodersError("teacher.vae needs diffusers: pip install 'fastdecoders[diffusers]'") from None
    cls = getattr(diffusers, space.vae_class, None)
    if cls is None:
        raise FastDecodersError(f"this diffusers has no {space.vae_class} (the {space.name} VAE class)")
    looks_local = cfg.vae.startswith((".", "/", "~")) or cfg.vae.count("/") != 1 or Path(cfg.vae).suffix
    if looks_local and not Path(cfg.vae).expanduser().is_dir():
        raise FastDecodersError(f"teacher.vae: expected a diffusers VAE folder or a hub id, got {cfg.vae!r} "
                                "(no such folder)")  # fmt: skip
    try:
        vae = open_vae(cfg.vae, space.vae_class, cfg.vae_subfolder)
    except Exception as e:  # missing files, offline hub, wrong class: one line for the user
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise FastDecodersError(
            f"teacher.vae: expected a loadable {space.vae_class} (local folder or reachable hub id), "
            f"got {cfg.vae!r} ({type(e).__name__}: {reason})"
        ) from None
    vae = vae.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    return vae, ((mean, std) if mean is not None and std is not None else None)
