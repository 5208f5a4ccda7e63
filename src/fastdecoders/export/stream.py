"""The causal video decoder's streaming step as one fixed-shape graph, and the loop that runs it in ONNX Runtime.

``CausalTAEDecoder`` keeps the clip's first frame as one pixel frame by dropping the first of the two frames each
``TimeUpsample`` makes from it, and its memory blocks see zeros before that frame. Dropping makes the first chunk's
frame count differ from later chunks', which a single exported graph cannot do. ``StreamStep`` keeps every frame
instead and marks the ones the torch decoder would have dropped as *dead*: with ``started = 0`` (the clip's first
chunk) a layer after m time upsamplings carries 2^m − 1 dead frames in front, and each memory block gives the first
live frame a zero previous frame, exactly as the torch decoder does. Dead frames never feed a live one, so the live
frames are bit-for-bit the same computation; the graph returns k·t pixel frames for t latent frames, and the runtime
drops the first k − 1 of a clip (k = temporal factor), like TAEHV's trim.

Graph: inputs ``latents`` (B, C, t, h, w), ``started`` (scalar, 0 or 1), one ``state_i`` per memory block (its last
input frame, (B, C_i, s_i·h, s_i·w); zeros at the start); outputs ``frames`` (B, 3, k·t, f·h, f·w) and ``next_state_i``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.export.runtime import OnnxDecoder, check_shape, read_metadata, session, static_hint


def _layer_plan(decoder: nn.Module) -> list[tuple[str, nn.Module, int, int]]:
    """(kind, layer, time upsamplings before it, spatial scale of its input) per layer of a ``CausalTAEDecoder``."""
    from fastdecoders.models.causal import FrameWise, MemBlock, TimeUpsample

    plan, ups, scale = [], 0, 1
    for layer in decoder.layers:
        if isinstance(layer, MemBlock):
            plan.append(("mem", layer, ups, scale))
        elif isinstance(layer, TimeUpsample):
            plan.append(("time", layer, ups, scale))
            ups += 1
        elif isinstance(layer, FrameWise):
            plan.append(("frames", layer, ups, scale))
            scale *= 2 ** sum(isinstance(m, nn.Upsample) for m in layer)
        else:
            raise FastDecodersError(f"stream export: unexpected layer {type(layer).__name__} in {decoder.arch}")
    return plan


class StreamStep(nn.Module):
    """One streaming step of a ``CausalTAEDecoder`` with explicit state tensors (see the module docstring)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder
        self.plan = _layer_plan(decoder)

    def forward(self, latents: torch.Tensor, started: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = latents.transpose(1, 2)  # (B, T, C, h, w)
        fresh = 1 - started.reshape(()).to(x.dtype)  # 1 on a clip's first chunk
        new_states = []
        states_iter = iter(states)
        for kind, layer, ups, _ in self.plan:
            if kind == "frames":
                x = layer(x)[0]
            elif kind == "time":
                b, t, c, h, w = x.shape
                x = layer.conv(x.flatten(0, 1)).reshape(b, 2 * t, c, h, w)  # keep both frames; dead ones marked
            else:
                previous = next(states_iter)
                b, t, c, h, w = x.shape
                shifted = torch.cat([previous[:, None], x[:, :-1]], dim=1)
                # on the first chunk, frames 0 .. 2^ups − 1 are dead or the first live one: their previous is zero
                index = torch.arange(t, device=x.device, dtype=x.dtype)
                keep = 1 - fresh * (index <= (2**ups - 1)).to(x.dtype)
                shifted = shifted * keep.reshape(1, t, 1, 1, 1)
                pair = torch.cat([x, shifted], dim=2).flatten(0, 1)
                y = layer.act(layer.conv(pair) + x.flatten(0, 1))
                new_states.append(x[:, -1])
                x = y.unflatten(0, (b, t))
        return (x.transpose(1, 2), *new_states)


def state_shapes(decoder: nn.Module, batch: int, h: int, w: int) -> list[tuple[int, ...]]:
    """Shapes of the memory blocks' states for latents of (h, w)."""
    return [(batch, layer.conv[0].in_channels // 2, s * h, s * w)
            for kind, layer, _, s in _layer_plan(decoder) if kind == "mem"]  # fmt: skip


def stream_graph_spec(decoder: nn.Module, latent_hw: tuple[int, int], batch: int, frames: int, dynamic: bool):
    """The ``GraphSpec`` of a streaming step: example chunk of ``frames`` latent frames."""
    from fastdecoders.export.onnx import MAX_BATCH, MAX_FRAMES, MAX_SIDE, GraphSpec

    param = next(decoder.parameters())
    h, w = latent_hw
    step = StreamStep(decoder)
    n = max(frames, 2) if dynamic else frames  # torch.export specialises sizes of 1
    b = max(batch, 2) if dynamic else batch
    latents = torch.randn(b, decoder.latent_channels, n, max(h, 2) if dynamic else h, max(w, 2) if dynamic else w,
                          device=param.device, dtype=param.dtype)  # fmt: skip
    shapes = state_shapes(decoder, b, latents.shape[3], latents.shape[4])
    states = tuple(torch.zeros(s, device=param.device, dtype=param.dtype) for s in shapes)
    started = torch.zeros((), device=param.device, dtype=param.dtype)
    state_names = [f"state_{i}" for i in range(len(states))]
    names = ["latents", "started", *state_names]
    outputs = ["frames", *[f"next_{s}" for s in state_names]]
    shape = [batch, decoder.latent_channels, frames, h, w]
    scales = [s[2] // latents.shape[3] for s in shapes]
    extra = {"states": [{"name": nm, "channels": s[1], "scale": k} for nm, s, k in zip(state_names, shapes, scales,
                                                                                       strict=True)],
             "trim": decoder.config.temporal_factor - 1}  # fmt: skip
    if not dynamic:
        return GraphSpec(step, (latents, started, *states), names, outputs, (), {"latents": (shape, shape)}, extra)
    dims = {"batch": torch.export.Dim("batch", min=1, max=MAX_BATCH),
            "frames": torch.export.Dim("frames", min=1, max=MAX_FRAMES),
            "height": torch.export.Dim("height", min=2, max=MAX_SIDE),
            "width": torch.export.Dim("width", min=2, max=MAX_SIDE)}  # fmt: skip
    state_dims = tuple({0: dims["batch"], 2: k * dims["height"] if k > 1 else dims["height"],
                        3: k * dims["width"] if k > 1 else dims["width"]} for k in scales)  # fmt: skip
    latent_dims = {0: dims["batch"], 2: dims["frames"], 3: dims["height"], 4: dims["width"]}
    dynamic_shapes = (latent_dims, None, state_dims)  # forward(latents, started, *states)
    lo = [1, decoder.latent_channels, 1, 2, 2]
    hi = [MAX_BATCH, decoder.latent_channels, MAX_FRAMES, MAX_SIDE, MAX_SIDE]
    return GraphSpec(step, (latents, started, *states), names, outputs, dynamic_shapes, {"latents": (lo, hi)}, extra)


def export_stream_model(decoder: nn.Module, spec: Any, opset: int | None):
    from fastdecoders.export.onnx import export_graph

    return export_graph(spec, opset)


class OnnxStreamingDecoder:
    """Streams a clip through an exported ``stream`` step in ONNX Runtime, chunk by chunk with constant memory.

    ``push((B, C, t, h, w) latents)`` returns the chunk's new pixel frames (B, 3, n, H, W), n = 1 + k·(t − 1) for the
    clip's first chunk and k·t after it; ``flush()`` ends the clip. Concatenated, the outputs equal the torch
    decoder's parallel ``decoder(whole_clip)`` (checked by ``fastdecoders export``).
    """

    def __init__(self, model: Any, threads: int | None = None, providers: list[str] | None = None):
        self.session = session(model, threads, providers)
        self.meta = read_metadata(self.session)
        self.name = str(model) if isinstance(model, (str, os.PathLike)) else "onnx model"
        if self.meta["kind"] != "stream":
            raise FastDecodersError(f"OnnxStreamingDecoder: expected a stream export, got a {self.meta['kind']} export "
                                    "(use OnnxDecoder)")  # fmt: skip
        import numpy as np

        self.np_dtype = np.float16 if self.meta["dtype"] == "float16" else np.float32
        self.states: list | None = None
        self._shape: tuple[int, ...] | None = None

    def push(self, latents: torch.Tensor) -> torch.Tensor:
        import numpy as np

        lo, hi = self.meta["inputs"]["latents"]["min"], self.meta["inputs"]["latents"]["max"]
        check_shape(tuple(latents.shape), lo, hi, self.name, static_hint(self.meta, "latents"))
        b, c, _, h, w = latents.shape
        if self._shape is not None and self._shape != (b, c, h, w):
            raise FastDecodersError(f"{self.name}: a chunk of shape {tuple(latents.shape)} cannot continue a clip of "
                                    f"(B, C, h, w) {self._shape}")  # fmt: skip
        first = self.states is None
        if first:
            self.states = [np.zeros((b, s["channels"], s["scale"] * h, s["scale"] * w), self.np_dtype)
                           for s in self.meta["states"]]  # fmt: skip
            self._shape = (b, c, h, w)
        feed = {"latents": latents.detach().cpu().numpy().astype(self.np_dtype, copy=False),
                "started": np.asarray(0 if first else 1, dtype=self.np_dtype)}  # fmt: skip
        feed.update({s["name"]: state for s, state in zip(self.meta["states"], self.states, strict=True)})
        frames, *self.states = self.session.run(None, feed)
        out = torch.from_numpy(frames)
        if first:
            out = out[:, :, self.meta["trim"] :]  # the dead frames in front of the clip's first frame
        return out.to(device=latents.device, dtype=latents.dtype)

    def flush(self) -> None:
        """End the clip: the next ``push`` starts a new one (no frames are pending: the decoder never looks ahead)."""
        self.states, self._shape = None, None

    def decode(self, latents: torch.Tensor, chunk: int = 1) -> torch.Tensor:
        """A whole clip (B, C, t, h, w) through the loop, ``chunk`` latent frames per step -> (B, 3, T, H, W)."""
        self.flush()
        parts = [self.push(latents[:, :, i : i + chunk]) for i in range(0, latents.shape[2], chunk)]
        self.flush()
        return torch.cat(parts, dim=2)


__all__ = ["OnnxDecoder", "OnnxStreamingDecoder", "StreamStep"]
