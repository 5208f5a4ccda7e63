"""The causal video decoder's (``taehv``) streaming step as one graph with explicit state tensors, and the loop that
runs it in ONNX Runtime.

A TAEHV decoder makes ``temporal_factor`` (k) raw frames of every latent frame and drops the ones the original VAE
does not emit (the latent space's rule: the first k − 1 of a clip for Wan-like VAEs; ``LatentSpace.frames_dropped``).
Its only state is one frame per memory block (zeros before the clip's first frame), so one step is the same graph
for every chunk, the first included:

    inputs  ``latents`` (B, C, t, h, w) diffusion-space, ``state_i`` (B, C_i, s_i·h, s_i·w) per memory block
    outputs ``frames`` (B, 3, k·t, f·h, f·w) RGB in [-1, 1], every raw frame; ``next_state_i``

``OnnxStreamingDecoder`` carries the states from chunk to chunk (zeros at a clip's start) and applies the frame rule,
so the concatenated output equals the torch decoder's parallel ``decoder(whole_clip)``.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.export.runtime import Runner, check_shape, static_hint
from fastdecoders.export.spec import MAX_BATCH, MAX_FRAMES, MAX_SIDE, GraphSpec
from fastdecoders.latents import get_latent_space
from fastdecoders.models.taehv import FrameMemory, per_frame, to_pm1_frames


def _memory_steps(decoder: nn.Module) -> list[int]:
    """Indices of the decoder's steps that carry a state (its memory blocks)."""
    return [i for i, step in enumerate(decoder.decoder.steps) if isinstance(step, FrameMemory)]


class StreamStep(nn.Module):
    """One streaming step of a ``TAEHVDecoder``: (latents, *states) -> (all raw frames in [-1, 1], *next states)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, latents: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = latents.transpose(1, 2)  # (B, T, C, h, w)
        carried = iter(states)
        next_states = []
        for step in self.decoder.decoder.steps:
            if isinstance(step, list):
                x = per_frame(step, x)
            elif isinstance(step, FrameMemory):
                # the block's [x_t, x_{t-1}] pairs built with cat, not by writing into slices of a buffer as
                # FrameMemory.forward does: torch.export pins the frame count to the example's on those writes
                previous = next(carried)  # zeros at the clip's start: exactly the decoder's "no previous frame"
                b, t = x.shape[:2]
                pair = torch.cat([x, torch.cat([previous[:, None], x[:, :-1]], dim=1)], dim=2)
                next_states.append(x[:, -1])
                x = step.combine(pair.flatten(0, 1), x.flatten(0, 1)).unflatten(0, (b, t))
            else:  # TimeSplit: stateless
                x = step(x, None)[0]
        return (to_pm1_frames(x).transpose(1, 2), *next_states)


def state_shapes(decoder: nn.Module, batch: int, h: int, w: int) -> list[tuple[int, ...]]:
    """Shapes of the memory blocks' states for (h, w) latents, from one run of a 1-frame chunk."""
    param = next(decoder.parameters())
    z = torch.zeros(batch, decoder.latent_channels, 1, h, w, device=param.device, dtype=param.dtype)
    states = decoder.decoder.initial_state()
    with torch.no_grad():
        decoder.decoder.run(z.transpose(1, 2), states)
    return [tuple(states[i].shape) for i in _memory_steps(decoder)]


def stream_graph_spec(decoder: nn.Module, latent_hw: tuple[int, int], batch: int, frames: int, dynamic: bool):
    """The ``GraphSpec`` of a streaming step with an example chunk of ``frames`` latent frames."""
    param = next(decoder.parameters())
    # torch.export specialises sizes of 1: trace dynamic graphs at >= 2 on every dynamic axis
    b, t, h, w = (max(n, 2) for n in (batch, frames, *latent_hw)) if dynamic else (batch, frames, *latent_hw)
    latents = torch.randn(b, decoder.latent_channels, t, h, w, device=param.device, dtype=param.dtype)
    shapes = state_shapes(decoder, b, h, w)
    states = tuple(torch.zeros(s, device=param.device, dtype=param.dtype) for s in shapes)
    names = [f"state_{i}" for i in range(len(states))]
    scales = [s[2] // h for s in shapes]
    extra = {"states": [{"name": n, "channels": s[1], "scale": k} for n, s, k in zip(names, shapes, scales,
                                                                                     strict=True)],
             "temporal_factor": decoder.config.temporal_factor}  # fmt: skip
    inputs, outputs = ["latents", *names], ["frames", *[f"next_{n}" for n in names]]
    example = (latents, *states)
    if not dynamic:
        shape = [batch, decoder.latent_channels, frames, *latent_hw]
        return GraphSpec(StreamStep(decoder), example, inputs, outputs, (), {"latents": (shape, shape)}, extra)
    ranges = (("batch", 1, MAX_BATCH), ("frames", 1, MAX_FRAMES), ("height", 2, MAX_SIDE), ("width", 2, MAX_SIDE))
    dims = {name: torch.export.Dim(name, min=lo, max=hi) for name, lo, hi in ranges}

    def scaled(dim, k):
        return k * dim if k > 1 else dim

    state_dims = tuple({0: dims["batch"], 2: scaled(dims["height"], k), 3: scaled(dims["width"], k)} for k in scales)
    latent_dims = {0: dims["batch"], 2: dims["frames"], 3: dims["height"], 4: dims["width"]}
    lo = [1, decoder.latent_channels, 1, 2, 2]
    hi = [MAX_BATCH, decoder.latent_channels, MAX_FRAMES, MAX_SIDE, MAX_SIDE]
    # forward(latents, *states): torch.export sees (latents, (state_0, ...))
    return GraphSpec(StreamStep(decoder), example, inputs, outputs, (latent_dims, state_dims),
                     {"latents": (lo, hi)}, extra)  # fmt: skip


class OnnxStreamingDecoder:
    """Streams a clip through an exported ``stream`` step in ONNX Runtime, chunk by chunk with constant memory.

    ``push((B, C, t, h, w) latents)`` returns the chunk's pixel frames (B, 3, n, H, W) that the original VAE emits
    (Wan: 1 + 4·(t − 1) for the first chunk, 4·t after it); ``flush()`` ends the clip. ``latent_frames`` (the whole
    clip's count) is needed only where the frame rule depends on it (CogVideoX).
    """

    def __init__(self, model: Any, threads: int | None = None, providers: list[str] | None = None,
                 latent_frames: int | None = None, engine: str = "onnxruntime"):  # fmt: skip
        self.runner = Runner(model, engine, threads, providers)
        self.meta = self.runner.meta
        self.name = str(model) if isinstance(model, (str, os.PathLike)) else "onnx model"
        if self.meta["kind"] != "stream":
            raise FastDecodersError(f"OnnxStreamingDecoder: expected a stream export, got a {self.meta['kind']} "
                                    "export (use OnnxDecoder)")  # fmt: skip
        self.np_dtype = np.float16 if self.meta["dtype"] == "float16" else np.float32
        self.latent_frames = latent_frames
        self.flush()

    def _frame_rule(self) -> tuple[int, int | None]:
        """(frames dropped at the start of each unit, unit length in raw frames or None for the whole clip)."""
        k = self.meta["temporal_factor"]
        if not self.meta.get("latent_space"):
            return k - 1, None
        space = get_latent_space(self.meta["latent_space"])
        if self.latent_frames is None and space.even_clips_uncut:
            raise FastDecodersError(f"{space.name}: streaming needs the clip's latent frame count "
                                    f"({space.frame_rule()}); pass latent_frames=t")  # fmt: skip
        return space.frames_dropped(self.latent_frames or 1), space.frame_chunk * k if space.frame_chunk else None

    def push(self, latents: torch.Tensor) -> torch.Tensor:
        lo, hi = self.meta["inputs"]["latents"]["min"], self.meta["inputs"]["latents"]["max"]
        check_shape(tuple(latents.shape), lo, hi, self.name, static_hint(self.meta, "latents"))
        b, c, _, h, w = latents.shape
        if self._shape is not None and self._shape != (b, c, h, w):
            raise FastDecodersError(f"{self.name}: a chunk of shape {tuple(latents.shape)} cannot continue a clip of "
                                    f"(B, C, h, w) {self._shape}")  # fmt: skip
        if self.states is None:  # a new clip: zero states, as the torch decoder's "no previous frame"
            self.states = [np.zeros((b, s["channels"], s["scale"] * h, s["scale"] * w), self.np_dtype)
                           for s in self.meta["states"]]  # fmt: skip
            self._shape, self._rule = (b, c, h, w), self._frame_rule()
        feed = {"latents": latents.detach().cpu().numpy().astype(self.np_dtype, copy=False)}
        feed.update({s["name"]: state for s, state in zip(self.meta["states"], self.states, strict=True)})
        frames, *self.states = self.runner.run(feed)
        drop, unit = self._rule
        index = np.arange(self._seen, self._seen + frames.shape[2])
        self._seen += frames.shape[2]
        keep = ((index % unit) if unit else index) >= drop
        out = torch.from_numpy(frames if keep.all() else frames[:, :, keep])
        return out.to(device=latents.device, dtype=latents.dtype)

    def clip(self, latent_frames: int | None = None) -> OnnxStreamingDecoder:
        """A streamer for a new clip sharing this one's session (its own states), like ``decoder.stream()``."""
        other = copy.copy(self)
        other.latent_frames = latent_frames
        other.flush()
        return other

    def flush(self) -> None:
        """End the clip: the next ``push`` starts a new one (no frames are pending: the decoder never looks ahead)."""
        self.states, self._shape, self._seen, self._rule = None, None, 0, (0, None)

    def decode(self, latents: torch.Tensor, chunk: int = 1) -> torch.Tensor:
        """A whole clip (B, C, t, h, w) through the loop, ``chunk`` latent frames per step -> (B, 3, T, H, W)."""
        saved, self.latent_frames = self.latent_frames, latents.shape[2]
        try:
            self.flush()
            parts = [self.push(latents[:, :, i : i + chunk]) for i in range(0, latents.shape[2], chunk)]
            return torch.cat(parts, dim=2)
        finally:
            self.flush()
            self.latent_frames = saved
