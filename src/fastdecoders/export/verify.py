"""Check an export on the spot: ``onnx.checker``, then ONNX Runtime against the PyTorch decoder (float32, CPU).

Random latents (standard normal, the diffusion-space scale) and real ones (a photo through the family's TAE encoder,
or latents the caller passes) go through both; float32 exports must agree within ``FP32_TOLERANCE`` (max abs diff,
on RGB in [-1, 1]); float16 exports are reported against the float32 PyTorch decode and must be finite. Stream
exports run the ONNX Runtime streaming loop (chunk by chunk, states carried) against the parallel PyTorch decode of
the whole clip.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.export.runtime import OnnxDecoder
from fastdecoders.export.spec import require
from fastdecoders.export.stream import OnnxStreamingDecoder
from fastdecoders.io import center_crop_resize, read_image
from fastdecoders.latents import get_latent_space, to_pm1
from fastdecoders.quality import sample_photo_paths
from fastdecoders.weights import load_encoder

FP32_TOLERANCE = 1e-4


def _case(what: str, latents: str, shape: tuple[int, ...], diff: float, fp16: bool) -> dict[str, Any]:
    finite = diff == diff and diff != float("inf")
    ok = finite and (fp16 or diff <= FP32_TOLERANCE)
    return {"check": what, "latents": latents, "shape": "x".join(map(str, shape)), "max_abs_diff": diff,
            "tolerance": None if fp16 else FP32_TOLERANCE, "ok": ok}  # fmt: skip


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.float() - b.float()).abs().max())


def real_latents(decoder: nn.Module, shape: tuple[int, ...], kind: str, weights_dir: str | None) -> torch.Tensor | str:
    """Latents of a real photo in ``decoder``'s family fitting ``shape`` (the graph input's), or why there are none."""
    space = get_latent_space(decoder.latent_space_name)
    if space.tae_encoder is None:
        return f"no TAE encoder for {space.name} latents here (pass --latents FILE)"
    if kind == "stream":
        return "stream exports take real latents only from --latents FILE"
    try:
        encoder = load_encoder(space.tae_encoder, weights_dir)
        paths = sample_photo_paths()
    except FastDecodersError as e:
        return str(e)
    if not paths:
        return "no sample photos found"
    h, w = shape[-2:]
    count = shape[0] * (shape[1] if kind == "clip" else 1)
    f = space.spatial_factor
    photos = [read_image(paths[i % len(paths)]) for i in range(count)]
    images = torch.stack([center_crop_resize(p, (h * f, w * f), f) for p in photos])
    with torch.no_grad():
        z = encoder(to_pm1(images))
    return z.unflatten(0, (shape[0], shape[1])) if kind == "clip" else z


def _torch_decode(decoder: nn.Module, z: torch.Tensor, kind: str) -> torch.Tensor:
    with torch.no_grad():
        if kind == "clip":  # the graph's (B, T, C, h, w): one clip of frames per batch item
            return decoder.decode_latents(z.flatten(0, 1), num_frames=z.shape[1]).unflatten(0, z.shape[:2])
        return decoder.decode_latents(z)


def verify(decoder: nn.Module, model: Any, meta: dict[str, Any], latents: torch.Tensor | None = None,
           weights_dir: str | None = None, real: bool = True) -> dict[str, Any]:  # fmt: skip
    """{"ok", "checks": [...]} for an exported ``model`` (``onnx.ModelProto``) of ``decoder``; ``real=False`` skips
    the real-latents check (random latents only)."""
    onnx = require("onnx")
    checks: list[dict[str, Any]] = []
    try:
        onnx.checker.check_model(model, full_check=True)
        checks.append({"check": "onnx.checker", "ok": True})
    except Exception as e:  # a checker failure is a result to report, not a crash
        checks.append({"check": "onnx.checker", "ok": False, "reason": str(e).splitlines()[0][:200]})
        return {"ok": False, "checks": checks}
    reference = decoder.float().cpu().eval()
    kind, fp16 = meta["kind"], meta["dtype"] == "float16"
    data = model.SerializeToString()
    lo, hi = meta["inputs"]["latents"]["min"], meta["inputs"]["latents"]["max"]
    shapes = [tuple(lo)]
    if lo != hi:  # dynamic: the example shape and an odd one inside the range
        example = tuple(meta["example_shape"])
        odd = list(example)
        for axis in (-2, -1):
            odd[axis] = min(hi[axis], example[axis] + (3 if axis == -1 else 1))
        odd[0] = min(hi[0], 2)
        shapes = [example, tuple(odd)]
    if kind == "stream":
        runner = OnnxStreamingDecoder(data)
        chunk = shapes[0][2]
        for shape in shapes:
            clip = (*shape[:2], 3 * shape[2], *shape[3:])  # three chunks: the first, then two carrying state
            z = torch.randn(clip)
            diff = _max_diff(runner.decode(z, chunk=shape[2]), _torch_decode(reference, z, kind))
            checks.append(_case("ORT stream loop vs PyTorch parallel", "random", clip, diff, fp16))
        if latents is not None:
            z = latents.float()
            step = z.shape[2] if lo[2] != hi[2] else chunk
            if z.shape[2] % step:
                z = z[:, :, : z.shape[2] - z.shape[2] % step]
            diff = _max_diff(runner.decode(z, chunk=step), _torch_decode(reference, z, kind))
            checks.append(_case("ORT stream loop vs PyTorch parallel", "real", tuple(z.shape), diff, fp16))
        elif real:
            checks.append({"check": "ORT stream loop vs PyTorch parallel", "latents": "real", "ok": None,
                           "reason": real_latents(reference, shapes[0], kind, weights_dir)})  # fmt: skip
    else:
        runner = OnnxDecoder(data)
        for shape in shapes:
            z = torch.randn(shape)
            diff = _max_diff(runner(z), _torch_decode(reference, z, kind))
            checks.append(_case("ORT vs PyTorch", "random", shape, diff, fp16))
        found = latents
        if found is None and real:
            found = real_latents(reference, shapes[0], kind, weights_dir)
        if isinstance(found, str):
            checks.append({"check": "ORT vs PyTorch", "latents": "real", "ok": None, "reason": found})
        elif found is not None:
            found = found.float()
            diff = _max_diff(runner(found), _torch_decode(reference, found, kind))
            checks.append(_case("ORT vs PyTorch", "real", tuple(found.shape), diff, fp16))
    ok = all(c["ok"] is not False for c in checks)
    return {"ok": ok, "checks": checks}
