"""Export a decoder to one self-contained ONNX file (weights inside, shape range and conventions in its metadata).

What the graph takes and returns depends on the decoder's kind (``graph_kind``):

* ``image`` (tae, effvit): ``latents`` (B, C, h, w) diffusion-space -> ``image`` (B, 3, f·h, f·w) RGB in [-1, 1];
* ``clip`` (tae-temporal): ``latents`` (B, T, C, h, w) -> ``video`` (B, T, 3, f·h, f·w): one clip of T frames per
  batch item (SVD's (B·T, C, h, w) + ``num_frames``, made explicit so that T is a graph dimension);
* ``stream`` (taehv): one streaming step, see ``fastdecoders.export.stream``.

The exported shape range is written into the model's metadata (key ``fastdecoders``, JSON) so that
``fastdecoders.export.runtime.OnnxDecoder`` can refuse a shape outside it with one clear line instead of an ONNX
Runtime trace. A static export takes exactly the example shape; ``dynamic=True`` takes batch 1..``MAX_BATCH`` and
latent sides 2..``MAX_SIDE`` (frames 1..``MAX_FRAMES`` for clips).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import warnings
from typing import Any

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.export.spec import FORMAT_VERSION, MAX_BATCH, MAX_FRAMES, MAX_SIDE, METADATA_KEY, GraphSpec, require
from fastdecoders.export.stream import stream_graph_spec
from fastdecoders.latents import get_latent_space
from fastdecoders.models.fileformat import check_finite_state

#: architectures that export, by graph kind; everything else is refused with this list.
SUPPORTED = {"tae": "image", "effvit": "image", "tae-temporal": "clip", "taehv": "stream"}


def check_arch(arch: str, name: str) -> str:
    """The graph kind of architecture ``arch``; one line naming what is supported otherwise."""
    if arch not in SUPPORTED:
        raise FastDecodersError(f"export: expected a decoder of architecture {', '.join(SUPPORTED)}, got {arch!r} "
                                f"({name})")  # fmt: skip
    return SUPPORTED[arch]


def graph_kind(decoder: nn.Module) -> str:
    """``image``, ``clip`` or ``stream`` for an exportable decoder; one line naming what is supported otherwise."""
    name = getattr(decoder, "registry_name", None) or type(decoder).__name__
    return check_arch(getattr(decoder, "arch", type(decoder).__name__), name)


class _ClipGraph(nn.Module):
    """(B, T, C, h, w) -> (B, T, 3, H, W) for an SVD-style temporal decoder (frames of one clip per batch item)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        b, t = latents.shape[:2]
        return self.decoder(latents.flatten(0, 1), num_frames=t).unflatten(0, (b, t))


def _dims(names: dict[int, tuple[str, int, int]]) -> dict[int, Any]:
    return {axis: torch.export.Dim(name, min=lo, max=hi) for axis, (name, lo, hi) in names.items()}


def graph_spec(decoder: nn.Module, latent_hw: tuple[int, int], batch: int = 1, frames: int = 2,
               dynamic: bool = False) -> GraphSpec:  # fmt: skip
    """The graph to export for ``decoder`` with example latents of ``latent_hw`` (latent pixels) and ``batch``."""
    kind = graph_kind(decoder)
    c = decoder.latent_channels
    h, w = latent_hw
    param = next(decoder.parameters())
    if kind == "stream":
        return stream_graph_spec(decoder, latent_hw, batch, frames, dynamic)
    if kind == "image":
        module, shape, out = decoder, [batch, c, h, w], "image"
        axes = {0: ("batch", 1, MAX_BATCH), 2: ("height", 2, MAX_SIDE), 3: ("width", 2, MAX_SIDE)}
    else:
        module, shape, out = _ClipGraph(decoder), [batch, frames, c, h, w], "video"
        axes = {0: ("batch", 1, MAX_BATCH), 1: ("frames", 1, MAX_FRAMES), 3: ("height", 2, MAX_SIDE),
                4: ("width", 2, MAX_SIDE)}  # fmt: skip
    # torch.export specialises example sizes of 1: trace dynamic graphs at >= 2 on every dynamic axis
    example_shape = [max(n, 2) if dynamic and i in axes else n for i, n in enumerate(shape)]
    example = torch.randn(*example_shape, device=param.device, dtype=param.dtype)
    if dynamic:
        lo, hi = list(shape), list(shape)
        for axis, (_, a, b) in axes.items():
            lo[axis], hi[axis] = a, b
        return GraphSpec(module, (example,), ["latents"], [out], (_dims(axes),), {"latents": (lo, hi)})
    return GraphSpec(module, (example,), ["latents"], [out], (), {"latents": (list(shape), list(shape))})


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter prints progress on stdout and logs missing-torchvision warnings: keep stdout for results."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # axis-renaming and deprecation notes from the exporter's internals
            yield
    finally:
        logger.setLevel(level)


def export_graph(spec: GraphSpec, opset: int | None = None):
    """The ``onnx.ModelProto`` of ``spec`` (torch.export-based exporter, weights inside)."""
    require("onnx")
    require("onnxscript")
    module = spec.module.eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module, spec.example, dynamo=True, input_names=spec.input_names, output_names=spec.output_names,
                dynamic_shapes=spec.dynamic_shapes or None, opset_version=opset, external_data=False, verbose=False,
                # onnxscript's graph optimizer (0.7) drops `x + 1e-15` as adding zero, which turns EffViT's
                # linear-attention 0/(0 + eps) into 0/0 = NaN; ONNX Runtime optimizes the graph at load anyway
                optimize=False,
            )  # fmt: skip
    except FastDecodersError:
        raise
    except Exception as e:  # torch.export / onnxscript failures: one line, not a page of graph dump
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise FastDecodersError(
            f"export: expected a decoder torch.onnx can export, got {type(e).__name__}: {first}"
        ) from None
    return program.model_proto


def decoder_metadata(decoder: nn.Module, spec: GraphSpec, kind: str, dtype: torch.dtype) -> dict[str, Any]:
    """What a runtime needs to use the file without fastdecoders: names, layouts, range, factors, conventions."""
    space_name = getattr(decoder, "latent_space_name", None)
    space = get_latent_space(space_name) if space_name else None
    return {
        "format": FORMAT_VERSION,
        "decoder": getattr(decoder, "registry_name", None),
        "arch": decoder.arch,
        "config": decoder.config_dict(),
        "latent_space": space_name,
        "kind": kind,
        "dtype": str(dtype).removeprefix("torch."),
        "inputs": {n: {"min": lo, "max": hi} for n, (lo, hi) in spec.ranges.items()},
        "outputs": spec.output_names,
        "spatial_factor": space.spatial_factor if space else None,
        "temporal_factor": space.temporal_factor if space else None,
        "convention": "input: diffusion-space latents (after the family's scale/shift); output: RGB in [-1, 1], "
        "not clamped",
        "torch": torch.__version__,
        **spec.extra,
    }


def set_metadata(model, meta: dict[str, Any]) -> None:
    """Write ``meta`` as JSON under the ``fastdecoders`` metadata key of an ``onnx.ModelProto`` (replacing it)."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)


def export_model(decoder: nn.Module, latent_hw: tuple[int, int], batch: int = 1, frames: int = 2,
                 dynamic: bool = False, fp16: bool = False, opset: int | None = None):  # fmt: skip
    """(``onnx.ModelProto``, metadata) of ``decoder`` (an eval-mode float32 copy is exported; ``decoder`` is kept).
    Weights holding NaN/Inf are refused, as ``save_decoder`` does: an export is a saved model too."""
    import copy


    name = getattr(decoder, "registry_name", None) or getattr(decoder, "arch", type(decoder).__name__)
    check_finite_state(decoder.state_dict(), f"refusing to export {name}")
    kind = graph_kind(decoder)
    dtype = torch.float16 if fp16 else torch.float32
    module = copy.deepcopy(decoder).eval().requires_grad_(False).to(device="cpu", dtype=dtype)
    if kind == "stream" and hasattr(module, "encoder"):
        del module.encoder  # TAEHV files hold an encoder too; the decoder's graph does not use it
    spec = graph_spec(module, latent_hw, batch, frames, dynamic)
    model = export_graph(spec, opset)
    meta = decoder_metadata(module, spec, kind, dtype)
    meta["example_shape"] = list(spec.example[0].shape)
    meta["opset"] = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    set_metadata(model, meta)
    return model, meta
