"""``fastdecoders.preview(pipe, ...)``: decode each denoising step's latents to a preview, through diffusers'
``callback_on_step_end``.

>>> with fastdecoders.preview(pipe, "linear", sink="steps.webp") as preview:
...     image = pipe(prompt, callback_on_step_end=preview).images[0]

The callback only reads: it returns no tensors to the pipeline (or exactly what the user's own ``callback`` returns),
decodes under ``torch.no_grad`` with deterministic decoders (no random numbers drawn), and the scheduler wrapper used
for ``x0=True`` returns the scheduler's own output unchanged. So the pipeline's result is the same with or without
previews (tested bit for bit).

Latents arrive in the pipeline's in-loop form: diffusion space (what our decoders take), in the family's layout —
NCHW images, SVD's (B, T, C, h, w), NCTHW clips — or packed into tokens (Flux, LTX), which
``fastdecoders.latents.unpack_tokens`` undoes with the family's ``pipeline_packing``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.integrations.diffusers import DiffusersVAEAdapter, same_latents
from fastdecoders.latents import LatentSpace, get_latent_space, to_01, unpack_tokens
from fastdecoders.models.diffusers_vae import vae_latent_spaces
from fastdecoders.previews.linear import LinearPreview, load_linear_preview
from fastdecoders.previews.sinks import PreviewFrame, make_sink
from fastdecoders.registry import get_spec, is_registered
from fastdecoders.weights import load_decoder


def pipeline_latent_space(pipe: Any, latents: str | None = None) -> LatentSpace:
    """The latent space of ``pipe``'s VAE (``latents`` overrides; one clear error when it cannot be told)."""
    if latents is not None:
        return get_latent_space(latents)

    vae = getattr(pipe, "vae", None)
    if isinstance(vae, DiffusersVAEAdapter):  # fastdecoders.use() is active: its space is already known
        return vae.latent_space
    spaces = vae_latent_spaces(vae, type(pipe).__name__) if vae is not None else []
    if len(spaces) != 1:
        found = ", ".join(s.name for s in spaces) or "none"
        raise FastDecodersError(
            f"preview: cannot tell which latent space {type(pipe).__name__}'s VAE makes (candidates: {found}); "
            f"pass latents="
        )
    return spaces[0]


def resolve_preview_decoder(decoder: str | nn.Module, space: LatentSpace, **load_kwargs: Any) -> nn.Module:
    """``"linear"`` (the shipped linear preview), a linear-preview ``.json``, a decoder name/path, or a module."""
    if isinstance(decoder, str) and decoder == "linear":
        return load_linear_preview(space)
    if isinstance(decoder, nn.Module):
        module = decoder
    elif str(decoder).endswith(".json"):
        module = LinearPreview.load(decoder)
    else:
        if is_registered(str(decoder)):  # a wrong family fails before any weights are looked for
            _check_family(str(decoder), get_spec(str(decoder)).latents, space)
        module = load_decoder(decoder, **load_kwargs)
    name = getattr(module, "registry_name", None) or type(module).__name__
    _check_family(name, getattr(module, "latent_space_name", None), space)
    channels = getattr(module, "latent_channels", space.channels)
    if channels != space.channels:
        raise FastDecodersError(
            f"preview: the decoder takes {channels}-channel latents; {space.name} latents have {space.channels}"
        )
    return module.eval()


def _check_family(name: str, declared: str | None, space: LatentSpace) -> None:
    if declared is not None and not same_latents(get_latent_space(declared), space):
        raise FastDecodersError(
            f"preview: {name} decodes {declared} latents, but the pipeline makes {space.name} latents"
        )


class Preview:
    """A ``callback_on_step_end`` that previews every ``every``-th step (and always the last one).

    Attributes:
        sink: where previews go (``sink.frames`` holds them for the default in-memory sink).
        count: previews made so far.
        timings: per previewed step, ``(preview_seconds, step_seconds)``: the callback's own time and the time since
            the previous callback returned (the pipeline's step, preview excluded). See ``overhead()``.
    """

    def __init__(
        self,
        pipe: Any,
        decoder: str | nn.Module = "linear",
        *,
        every: int = 1,
        sink: object = None,
        x0: bool = False,
        callback: Callable | None = None,
        latents: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        fps: float = 8.0,
        **load_kwargs: Any,
    ):
        if not isinstance(every, int) or every < 1:
            raise FastDecodersError(f"preview: every must be a positive int, got {every!r}")
        self.pipe = pipe
        self.space = pipeline_latent_space(pipe, latents)
        self.decoder = resolve_preview_decoder(decoder, self.space, **load_kwargs)
        self.every, self.callback = every, callback
        self.size = (height, width, num_frames)
        self.sink = make_sink(sink, fps)
        self.count = 0
        self.timings: list[tuple[float, float]] = []
        self._last_return: float | None = None
        self._x0: torch.Tensor | None = None
        self._scheduler: Any = None  # the scheduler whose step() is wrapped for x0, until close()
        if x0:
            self._wrap_scheduler(pipe.scheduler)

    # -- the callback -----------------------------------------------------------------------------------------------

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        step_seconds = start - self._last_return if self._last_return is not None else float("nan")
        total = getattr(pipe, "_num_timesteps", None)
        last = total is not None and step == total - 1
        if step % self.every == 0 or last:
            if "latents" not in callback_kwargs:
                raise FastDecodersError(
                    f"preview: needs 'latents' in callback_on_step_end_tensor_inputs, got {sorted(callback_kwargs)}"
                )
            latents = callback_kwargs["latents"]
            images = self._decode(latents)
            x0 = self._decode(self._x0) if self._x0 is not None else None
            self.sink.write(PreviewFrame(step, float(timestep), images, x0))
            self.count += 1
            self.timings.append((time.perf_counter() - start, step_seconds))
        if last:
            self.sink.close()
        result = self.callback(pipe, step, timestep, callback_kwargs) if self.callback is not None else {}
        # a next run's first step must not count the time between runs as a step
        self._last_return = None if last else time.perf_counter()
        return result

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """In-loop latents -> previews in [0, 1] on the CPU: (B, 3, H, W), or (B, 3, T, H, W) for video."""
        z = self._layout(latents)
        decoder = self.decoder
        # fp32 on the CPU (half is slow there); the pipeline's dtype on an accelerator
        dtype = torch.float32 if z.device.type == "cpu" else z.dtype
        tensor = next(itertools.chain(decoder.parameters(), decoder.buffers()))  # linear previews: buffers only
        if tensor.device != z.device or tensor.dtype != dtype:
            decoder.to(device=z.device, dtype=dtype)
        z = z.to(dtype)
        out = decoder.decode_latents(z)  # clips: frame by frame for image decoders (the decode protocol)
        return to_01(out.float()).cpu()  # .cpu() waits for the device, so the timing includes the decode

    def _layout(self, latents: torch.Tensor) -> torch.Tensor:
        """In-loop latents -> (B, C, h, w) or (B, C, T, h, w), diffusion space."""
        space = self.space
        if latents.ndim == 3:
            return self._unpack(latents)
        if space.layout == "NTCHW" and latents.ndim == 5:  # SVD keeps (B, T, C, h, w)
            latents = latents.permute(0, 2, 1, 3, 4)
        want = 5 if space.is_video else 4
        if latents.ndim != want or latents.shape[1] != space.channels:
            raise FastDecodersError(
                f"preview: {space.name} latents are {space.layout} with {space.channels} channels, "
                f"got {tuple(latents.shape)}"
            )
        return latents

    def _unpack(self, tokens: torch.Tensor) -> torch.Tensor:
        space = self.space
        if space.pipeline_packing is None:
            raise FastDecodersError(
                f"preview: {space.name} pipelines are not known to pack latents into tokens, got {tuple(tokens.shape)}"
            )
        pt, p = space.pipeline_packing
        height, width, num_frames = self.size
        frames = space.latent_frames(num_frames) if num_frames and space.is_video else None
        if space.is_video and frames is None:
            raise FastDecodersError(f"preview: {space.name} latents arrive packed; pass num_frames=, height=, width=")
        cells = tokens.shape[1] * p * p * pt // (frames or 1)
        if height is None or width is None:  # square unless told (the pipelines' default size is square)
            h = w = round(cells**0.5)
            if h * w != cells:
                raise FastDecodersError(
                    f"preview: {tokens.shape[1]} packed tokens are not a square; pass height= and width= (pixels)"
                )
        else:
            f = space.spatial_factor
            h, w = height // (f * p) * p, width // (f * p) * p
        return unpack_tokens(tokens, h, w, (pt, p), frames=frames)

    # -- x0 ---------------------------------------------------------------------------------------------------------

    def _wrap_scheduler(self, scheduler: Any) -> None:
        """Record each step's predicted clean latents: ``pred_original_sample``/``denoised`` where the scheduler's
        output has it; for flow matching ``x0 = x_t − σ·v`` (exact for FlowMatchEulerDiscreteScheduler)."""
        original = scheduler.step
        flow = type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"

        def step(model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
            out = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            x0 = getattr(out, "pred_original_sample", None)
            x0 = getattr(out, "denoised", None) if x0 is None else x0
            if x0 is None and flow and scheduler.step_index is not None:
                sigma = scheduler.sigmas[scheduler.step_index - 1].to(sample.device, sample.dtype)
                x0 = sample - sigma * model_output
            self._x0 = x0
            return out if return_dict else out.to_tuple()

        self._scheduler = scheduler
        scheduler.step = step

    # -- results ----------------------------------------------------------------------------------------------------

    def overhead(self) -> dict[str, float]:
        """Median preview ms, median step ms (preview excluded) and preview as % of a step, over previewed steps
        after the first (the first has no step interval and carries warm-up)."""
        rows = [t for t in self.timings[1:] if t[1] == t[1]]
        if not rows:
            return {}
        preview_ms = float(torch.tensor([r[0] for r in rows]).median()) * 1e3
        step_ms = float(torch.tensor([r[1] for r in rows]).median()) * 1e3
        return {"preview_ms": preview_ms, "step_ms": step_ms, "percent": 100 * preview_ms / step_ms, "n": len(rows)}

    @property
    def frames(self) -> list[PreviewFrame]:
        """The previews kept by the default in-memory sink."""
        return getattr(self.sink, "frames", [])

    def close(self) -> None:
        """Finish the sink (write a pending animation) and restore the scheduler's own ``step``."""
        self.sink.close()
        if self._scheduler is not None:
            if self._scheduler.__dict__.get("step") is not None:
                del self._scheduler.step
            self._scheduler = None

    def __enter__(self) -> Preview:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def preview(pipe: Any, decoder: str | nn.Module = "linear", **kwargs: Any) -> Preview:
    """A ``Preview`` callback for ``pipe`` (see ``Preview``): pass it as ``callback_on_step_end``.

    Args:
        pipe: a diffusers pipeline (images or video) whose VAE tells the latent family.
        decoder: ``"linear"`` (shipped per family; latent resolution, ~free), a decoder name (``"taesdxl"``), a path
            or a module.
        every: preview every N-th step (the last step is always previewed).
        sink: None (kept in ``.frames``), a callable taking a ``PreviewFrame``, a folder for PNGs, or a path ending
            .webp/.gif/.mp4 for the trajectory (written at the last step or on ``close()``).
        x0: also decode the scheduler's predicted clean latents (where it exposes them) under the step's preview.
        callback: the user's own ``callback_on_step_end``, called after the preview; what it returns goes to the
            pipeline.
        latents: the latent family, when the pipeline's VAE does not tell it.
        height, width, num_frames: the call's pixel size, for packed latents (Flux, LTX) of a non-default size.
    """
    return Preview(pipe, decoder, **kwargs)
