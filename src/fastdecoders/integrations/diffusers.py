"""Drop-in for diffusers pipelines: ``use(pipe, decoder)`` swaps ``pipe.vae`` for an adapter that decodes with ours.

>>> with fastdecoders.use(pipe, "taesdxl"):                   # restores the pipeline's own VAE on exit
...     image = pipe(prompt_embeds=..., pooled_prompt_embeds=...).images[0]

How it fits. Every diffusers pipeline ends the same way: it undoes its latent normalisation with numbers it reads from
``pipe.vae`` (``config.scaling_factor``/``shift_factor``, ``config.latents_mean/std``, LTX's ``vae.latents_mean``
buffers), calls ``vae.decode(raw)`` and post-processes the result as RGB in [-1, 1]. The adapter presents the original
VAE's config and attributes, so that arithmetic runs unchanged, and in ``decode`` maps the raw latent back to diffusion
space with the *same* numbers (so a checkpoint's own values win over the registry's published ones) and runs our
decoder. ``encode`` stays the original VAE's: the latent space remains the pipeline's.

The three conventions that differ between pipelines, VAEs and tiny decoders live at this seam and nowhere else in
fastdecoders (the formulas themselves are in ``fastdecoders.latents``):

* **value range**: fastdecoders decoders already emit [-1, 1] like diffusers VAEs; nothing is clamped here, the
  pipeline's post-processing clamps as it does for its own VAE.
* **layout**: image pipelines decode NCHW. Wan, LTX and other 3-D VAEs decode NCTHW clips. SVD flattens its
  (B, T, C, h, w) latents to frames and calls ``decode(frames, num_frames=n)`` in chunks, passing ``num_frames`` only
  when ``vae.forward`` has that parameter (the adapter's does). Image decoders run frame by frame, SVD-style temporal
  decoders get ``num_frames``, NCTHW video decoders get clips.
* **mean/std**: per-channel statistics (Wan's config, LTX's buffers, SDXL-style ``latents_mean``) are divided by the
  config's ``scaling_factor`` where the pipeline multiplies by it, exactly as the pipelines do.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import LatentSpace, get_latent_space
from fastdecoders.models import Decoder, DecoderOutput
from fastdecoders.models.diffusers_vae import vae_channels, vae_latent_spaces, vae_spatial_factor
from fastdecoders.registry import get_spec, list_decoders
from fastdecoders.switching.core import PipelineVAE
from fastdecoders.video import write_stream
from fastdecoders.weights import load_decoder

_PIXEL_LAYOUTS = {"NCHW": "images (B, C, h, w)", "NTCHW": "frames (B·T, C, h, w)", "NCTHW": "clips (B, C, t, h, w)"}


# -- which latent space a pipeline's VAE makes (``vae_latent_spaces``: fastdecoders.models.diffusers_vae) ------


def same_latents(a: LatentSpace, b: LatentSpace) -> bool:
    """Whether two families' latents are the same numbers: one encoder, one normalisation.

    SVD's VAE keeps Stable Diffusion's encoder and scaling (only its decoder is temporal), so ``svd`` and ``sd1``
    share ``tae_encoder``, channels, factors and scaling, and an sd1 decoder reads svd latents frame by frame.
    """
    if a.name == b.name:
        return True

    def key(s: LatentSpace) -> tuple:
        stats = (s.scaling_factor, s.shift_factor, s.latents_mean, s.latents_std)
        return (s.tae_encoder, s.channels, s.spatial_factor, s.temporal_factor, *stats)

    return a.tae_encoder is not None and key(a) == key(b)


def _decoders_for(space: LatentSpace) -> list[str]:
    return [name for name in list_decoders() if same_latents(get_spec(name).latent_space, space)]


# -- the adapter ------------------------------------------------------------------------------------------------------


def _name(decoder: nn.Module) -> str:
    return getattr(decoder, "registry_name", None) or type(decoder).__name__


class DiffusersVAEAdapter(nn.Module):
    """A diffusers-VAE look-alike: the original VAE's config, attributes and ``encode``; our decoder in ``decode``.

    ``decode(raw, ...)`` takes what the pipeline passes its VAE (raw latents in the pipeline's layout: NCHW images,
    SVD's (B·T, C, h, w) frames, or NCTHW clips) and returns ``DecoderOutput(sample)`` with RGB in [-1, 1] in that same
    layout: (B, 3, H, W), (B·T, 3, H, W) or (B, 3, T, H, W) with T from the latent space's frame arithmetic.

    Both modules are children, so ``pipe.to(...)`` and the pipeline's own ``vae.to(float32)`` upcast move them
    together; the adapter's ``dtype`` and ``device`` are our decoder's, which follows the original VAE's.
    """

    def __init__(
        self,
        vae: nn.Module,
        decoder: Decoder,
        latents: str | LatentSpace | None = None,
        pipeline_name: str | None = None,
    ):
        """
        Args:
            vae: the pipeline's VAE (a diffusers ModelMixin with ``config``); kept for ``encode`` and its numbers.
            decoder: a fastdecoders decoder (diffusion-space latents -> RGB in [-1, 1]).
            latents: the latent space ``decoder`` reads, if not its own ``latent_space_name``.
            pipeline_name: the pipeline's class name, to tell apart families that share the VAE class.
        """
        super().__init__()
        self.original_vae = vae
        self.fast_decoder = decoder
        declared = latents if latents is not None else getattr(decoder, "latent_space_name", None)
        if declared is None:
            raise FastDecodersError(f"{_name(decoder)} does not say which latent space it decodes; pass latents=")
        self.decoder_space = get_latent_space(declared)
        self.latent_space = self._check_compatible(vae, pipeline_name)
        self._check_layout()
        # the positional parameters of the original decode (LTX: temb, SVD: num_frames, KL: return_dict, generator)
        self._decode_params = list(inspect.signature(vae.decode).parameters)[1:]
        self._space, self._mean, self._std = _checkpoint_statistics(vae, self.latent_space)
        decoder.to(device=vae.device, dtype=vae.dtype).eval()

    # -- set-up checks --------------------------------------------------------------------------------------------

    def _check_compatible(self, vae: nn.Module, pipeline_name: str | None) -> LatentSpace:
        """The pipeline's latent space if the decoder reads it; otherwise one error naming decoders that would."""
        spaces = vae_latent_spaces(vae, pipeline_name)
        what = f"{pipeline_name or 'the pipeline'}'s {type(vae).__name__} ({vae_channels(vae)} ch)"
        if not spaces:  # a VAE class no registered family uses: trust the decoder if the shapes agree
            factor = vae_spatial_factor(vae)
            d = self.decoder_space
            if d.channels == vae_channels(vae) and factor in (None, d.spatial_factor):
                warnings.warn(
                    f"cannot tell which latent space {what} makes; assuming {d.name}, as {_name(self.fast_decoder)} "
                    f"reads. Wrong colours mean it is not.",
                    stacklevel=4,
                )
                return d
            raise FastDecodersError(
                f"{_name(self.fast_decoder)} reads {d.name} latents ({d.channels} ch, f{d.spatial_factor}), but "
                f"{what} makes latents of {vae_channels(vae)} ch, f{factor}"
            )
        for space in spaces:
            if same_latents(space, self.decoder_space):
                channels = getattr(self.fast_decoder, "latent_channels", space.channels)
                if channels != space.channels:  # only possible when latents= forced a space onto the decoder
                    name, want = _name(self.fast_decoder), space.channels
                    raise FastDecodersError(f"{name} takes {channels}-channel latents; {space.name} has {want}")
                return space
        names = " or ".join(s.name for s in spaces)
        fits = sorted({n for s in spaces for n in _decoders_for(s)})
        hint = f"; decoders for it: {', '.join(fits)}" if fits else ""
        raise FastDecodersError(
            f"{_name(self.fast_decoder)} decodes {self.decoder_space.name} latents, but {what} makes {names} "
            f"latents{hint}"
        )

    def _check_layout(self) -> None:
        space, clips = self.latent_space, self.fast_decoder.latent_ndim == 5  # forward takes NCTHW clips
        if space.layout == "NCHW" and clips:
            raise FastDecodersError(f"{_name(self.fast_decoder)} is a video decoder; {space.name} is an image space")
        if space.layout == "NCTHW" and space.is_causal and not clips:
            raise FastDecodersError(
                f"{_name(self.fast_decoder)} decodes frame by frame, but {space.name} latents pack "
                f"{space.temporal_factor} frames into each latent frame; it needs a video (NCTHW) decoder"
            )

    # -- what pipelines read ----------------------------------------------------------------------------------------

    @property
    def config(self):
        """The original VAE's config, except that a timestep-conditioned VAE (LTX 0.9.1+) reads as unconditioned: the
        pipeline would otherwise blend noise into the latents for a decoder that denoises, and ours does not."""
        config = self.original_vae.config
        if config.get("timestep_conditioning"):
            from diffusers.configuration_utils import FrozenDict

            return FrozenDict({**config, "timestep_conditioning": False})
        return config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.fast_decoder.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.fast_decoder.parameters()).device

    def __getattr__(self, name: str) -> Any:
        # nn.Module keeps children in _modules; any other public name a pipeline asks of its VAE (latents_mean
        # buffers, spatial_compression_ratio, post_quant_conv, enable_tiling, …) is the original VAE's. Private names
        # (accelerate's _hf_hook, torch.compile's _orig_mod) are not delegated: they describe this module.
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if name.startswith("_") or "original_vae" not in modules:
                raise
            return getattr(modules["original_vae"], name)

    def _onload(self) -> None:
        """Run accelerate's offload hook if ``enable_model_cpu_offload`` put one on the adapter. Hooks fire on
        ``forward`` but pipelines call ``encode``/``decode``; diffusers' ``apply_forward_hook`` does the same."""
        hook = self.__dict__.get("_hf_hook")
        if hook is not None and hasattr(hook, "pre_forward"):
            hook.pre_forward(self)

    # -- the VAE interface ------------------------------------------------------------------------------------------

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        """The original VAE's ``encode``: latents stay in the pipeline's latent space."""
        self._onload()
        return self.original_vae.encode(*args, **kwargs)

    def decode(self, z: torch.Tensor, *args: Any, **kwargs: Any) -> DecoderOutput | tuple[torch.Tensor]:
        """Raw VAE latents in the pipeline's layout -> ``DecoderOutput(sample)``, RGB in [-1, 1], same layout.

        Positional arguments after ``z`` mean what they mean to the original VAE's ``decode`` (``return_dict`` for
        AutoencoderKL, ``num_frames`` for SVD's, ``temb`` for LTX's). ``num_frames`` is the clip length of SVD-style
        frames (default: all frames are one clip). ``generator`` and ``temb`` steer the original VAE's sampling or
        timestep conditioning, which our decoders do not have, and are ignored.
        """
        if len(args) > len(self._decode_params):
            raise TypeError(f"decode() takes at most {len(self._decode_params) + 1} positional arguments")
        options = dict(zip(self._decode_params, args, strict=False)) | kwargs
        return_dict = options.get("return_dict", True)
        num_frames = options.get("num_frames")
        self._check_input(z)
        self._onload()
        if z.device != self.device:
            # the pipeline sends latents to the VAE's execution device, which under offloading (a hook on the
            # original VAE) is not where weights rest; our decoder is small, so it moves to the latents
            self.fast_decoder.to(z.device)
        latents = self._space.to_diffusion(z.float(), mean=self._mean, std=self._std).to(self.dtype)
        sample = self._run(latents, num_frames)
        self._check_output(z, sample)
        return DecoderOutput(sample) if return_dict else (sample,)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
        num_frames: int | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Images in [-1, 1] -> encode with the original VAE -> decode with ours (a round trip, like ``vae(x)``).

        ``num_frames`` is in this signature because SVD's pipeline passes it to ``decode`` only when ``vae.forward``
        accepts it, and temporal decoders need it.
        """
        posterior = self.original_vae.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict, num_frames=num_frames)

    # -- layout -----------------------------------------------------------------------------------------------------

    def _run(self, latents: torch.Tensor, num_frames: int | None) -> torch.Tensor:
        """Diffusion-space latents in the pipeline's layout -> RGB in [-1, 1] in that layout (the decode protocol:
        the decoder converts frames/clips to what it takes)."""
        layout = self.latent_space.layout
        if layout == "NCHW":  # images: each one a clip of one frame
            return self.fast_decoder.decode_latents(latents, num_frames=1)
        if layout == "NTCHW":  # SVD: (B·T, C, h, w), clips of ``num_frames`` (default: all frames one clip)
            return self.fast_decoder.decode_latents(latents, num_frames=num_frames or latents.shape[0])
        return self.fast_decoder.decode_latents(latents)  # NCTHW clips

    def _check_input(self, z: torch.Tensor) -> None:
        space = self.latent_space
        ndim = 5 if space.layout == "NCTHW" else 4
        if not isinstance(z, torch.Tensor) or z.ndim != ndim or z.shape[1] != space.channels:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise FastDecodersError(
                f"vae.decode: {space.name} latents here are {_PIXEL_LAYOUTS[space.layout]} with C = {space.channels}, "
                f"got {shape}"
            )

    def _check_output(self, z: torch.Tensor, sample: torch.Tensor) -> None:
        space = self.latent_space
        h, w = space.pixel_size(*z.shape[-2:])
        if space.layout == "NCTHW":
            expected = (z.shape[0], 3, space.pixel_frames(z.shape[2]), h, w)
        else:
            expected = (z.shape[0], 3, h, w)
        if tuple(sample.shape) != expected:
            raise FastDecodersError(
                f"{_name(self.fast_decoder)} returned {tuple(sample.shape)} for {space.name} latents "
                f"{tuple(z.shape)}; the pipeline expects {expected}"
            )


def _checkpoint_statistics(vae: nn.Module, space: LatentSpace) -> tuple[LatentSpace, torch.Tensor | None, Any]:
    """(space with the checkpoint's scale/shift, per-channel mean, per-channel std) as the pipelines apply them.

    Pipelines with per-channel statistics compute ``raw = z * std / scaling_factor + mean`` (SDXL with
    ``latents_mean``, LTX; Wan has no scaling_factor), the others ``raw = z / scaling_factor + shift_factor``. So the
    effective std is ``std / scaling_factor``. Statistics come from buffers first (LTX keeps them there), then the
    config; a checkpoint without them keeps the registry's.
    """
    config = vae.config
    buffers = dict(vae.named_buffers(recurse=False))
    mean = buffers.get("latents_mean", config.get("latents_mean"))
    std = buffers.get("latents_std", config.get("latents_std"))
    scaling = config.get("scaling_factor") or 1.0
    shift = config.get("shift_factor") or 0.0
    if mean is not None and std is not None:
        return space, torch.as_tensor(mean).float().cpu(), torch.as_tensor(std).float().cpu() / scaling
    return replace(space, scaling_factor=float(scaling), shift_factor=float(shift)), None, None


# -- the swap ---------------------------------------------------------------------------------------------------------


class DecoderSwap:
    """What ``use`` returns: ``pipe.vae`` is already the adapter. ``restore()`` (or leaving a ``with`` block) puts back
    what was there before. Restore before ``pipe.save_pretrained``: the adapter is not a diffusers model and would be
    recorded in ``model_index.json`` as one.

    Attributes:
        pipe: the pipeline.
        adapter: the ``DiffusersVAEAdapter`` now in ``pipe.vae``.
        decoder: our decoder inside it.
        previous: what ``pipe.vae`` was before (the original VAE, or an earlier swap's adapter).
    """

    def __init__(self, pipe: Any, adapter: DiffusersVAEAdapter, previous: nn.Module):
        self.pipe, self.adapter, self.previous = pipe, adapter, previous
        self.decoder = adapter.fast_decoder
        pipe.vae = adapter

    @property
    def active(self) -> bool:
        return self.pipe.vae is self.adapter

    def restore(self) -> None:
        """Put the previous VAE back. Idempotent; if ``pipe.vae`` was replaced since, that replacement is kept."""
        if self.active:
            self.pipe.vae = self.previous
        elif self.pipe.vae is not self.previous:
            warnings.warn("pipe.vae was replaced after fastdecoders.use(); leaving it as it is", stacklevel=2)

    def write_video(
        self, latents: torch.Tensor, path: str, fps: float = 16.0, layout: str = "NCTHW", chunk: int = 1
    ) -> dict:
        """Stream one clip straight into an MP4 (constant memory in its length), bypassing the pipeline's decode.

        ``latents``: what ``pipe(..., output_type="latent")`` returns, i.e. diffusion-space latents of one clip:
        (1, C, t, h, w) for Wan and HunyuanVideo; CogVideoX returns (1, t, C, h, w): pass ``layout="NTCHW"``.
        Returns ``{"path", "frames"}``; nothing is written on failure.
        """
        if layout not in ("NCTHW", "NTCHW"):
            raise FastDecodersError(f"layout: expected NCTHW or NTCHW, got {layout!r}")
        z = latents.transpose(1, 2) if layout == "NTCHW" else latents
        return write_stream(self.decoder, z.detach(), path, fps=fps, chunk=chunk)

    def __enter__(self) -> DecoderSwap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "active" if self.active else "restored"
        return f"DecoderSwap({_name(self.decoder)} in {type(self.pipe).__name__}, {state})"


def use(pipe: Any, decoder: str | Decoder, *, latents: str | None = None, **load_kwargs: Any) -> DecoderSwap:
    """Decode ``pipe``'s latents with a fastdecoders decoder; ``output_type="pil"`` etc. work unchanged.

    >>> swap = fastdecoders.use(pipe, "taesdxl")            # pipe.vae is now the adapter
    >>> swap.restore()                                      # or: with fastdecoders.use(pipe, "taesdxl"): ...

    Args:
        pipe: a diffusers pipeline with a ``vae`` (StableDiffusion[XL|3], Flux, StableVideoDiffusion, Wan, LTX, …).
        decoder: a registry name, a weights file or folder, a hub id, or a ``Decoder`` (moved to the VAE's device
            and dtype, like a loaded one).
        latents: the latent space the decoder reads, when its file does not say, or to force a decoder onto latents
            it was not made for (e.g. an sdxl decoder in SVD; warned about, as colours will be off).
        **load_kwargs: passed to ``fastdecoders.load_decoder`` (``weights_dir``, ``pretrained``).

    Raises:
        FastDecodersError: the decoder reads a different latent space than the pipeline's VAE makes, or it cannot
            decode the pipeline's layout (a frame-wise decoder for causal video latents).
    """
    vae = getattr(pipe, "vae", None)
    if vae is None:
        raise FastDecodersError(
            f"{type(pipe).__name__} has no vae; load the pipeline with its VAE (it holds the scaling)"
        )
    previous = vae
    if isinstance(vae, DiffusersVAEAdapter):  # swapping again: wrap the real VAE, not the earlier adapter
        vae = vae.original_vae
    if isinstance(decoder, nn.Module):
        if not isinstance(decoder, Decoder):
            raise FastDecodersError(f"expected a fastdecoders Decoder, a name or a path, got {type(decoder).__name__}")
        loaded = decoder
    else:
        loaded = load_decoder(decoder, latents=latents, **load_kwargs)
    declared = getattr(loaded, "latent_space_name", None)
    if latents is not None and declared is not None and get_latent_space(latents).name != declared:
        warnings.warn(
            f"decoding {latents} latents with {_name(loaded)}, which was made for {declared} latents, as asked",
            stacklevel=2,
        )
    adapter = DiffusersVAEAdapter(vae, loaded, latents=latents, pipeline_name=type(pipe).__name__)
    if getattr(loaded, "arch", None) == "switch" and loaded.heavy is None:  # a switch whose heavy is the pipeline's VAE

        loaded.bind_heavy(PipelineVAE(vae, adapter._space, adapter._mean, adapter._std))
    return DecoderSwap(pipe, adapter, previous)
