"""Runtime backends outside PyTorch, and ``auto``: the fastest backend measured for this decoder, shape and device.

* ``onnxruntime``: the decoder exported once to ONNX (dynamic shape, ``fastdecoders.export``), cached on disk by its
  weights, config, dtype and library versions, and run by an ONNX Runtime session with torch's thread count.
  ``openvino``: the same file compiled by OpenVINO's CPU plugin (float32). ``runtime_decoder`` wraps either as an
  ``nn.Module`` that is called like the torch decoder (same ``forward`` signature,
  latents in, RGB in [-1, 1] out, same dtype and device) and exposes the torch decoder's attributes
  (``latent_space_name``, ``receptive_field``, ``config`` ...), so tiling, the CLI and the integrations use it as is.
* ``auto``: times each candidate backend (``candidates``) on random latents of the requested shape (1 warm-up,
  ``AUTO_RUNS`` timed runs, median) and keeps the fastest; the choice is cached in ``backends.json`` under the cache
  folder, keyed by decoder (architecture + config), shape, dtype, device and library versions, so it is measured
  once per machine. A decode under ``AUTO_MIN_GFLOPS`` (counted, so the rule does not depend on the machine's load)
  stays eager unmeasured: no backend can save more than a few ms there, and exporting costs seconds.

Cache folder: ``$FASTDECODERS_CACHE`` or ``~/.cache/fastdecoders``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastdecoders.bench.flops import count_flops
from fastdecoders.errors import FastDecodersError
from fastdecoders.export.onnx import SUPPORTED, export_model, graph_kind
from fastdecoders.export.runtime import OnnxDecoder, save_model
from fastdecoders.export.spec import require
from fastdecoders.export.stream import OnnxStreamingDecoder
from fastdecoders.export.verify import verify
from fastdecoders.io import atomic_write_text
from fastdecoders.models.protocol import LatentDecoder
from fastdecoders.torch_paths import TORCH_BACKENDS, fold_batchnorm, safe_half, torch_path

#: every backend ``fastdecoders.fast.optimize`` takes
BACKENDS = (*TORCH_BACKENDS, "onnxruntime", "openvino", "auto")

RUNTIME_BACKENDS = ("onnxruntime", "openvino")
AUTO_RUNS = 3
#: bumped when what ``auto`` measures changes, so older cached choices are not reused (2: the GFLOP floor, openvino).
CHOICE_FORMAT = 2
#: decodes below this many GFLOPs stay eager unmeasured (~20 ms on 2 CPU cores): an export costs seconds.
AUTO_MIN_GFLOPS = 1.0


def cache_dir() -> Path:
    return Path(os.environ.get("FASTDECODERS_CACHE") or Path.home() / ".cache" / "fastdecoders")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__}
    for name in ("onnxruntime", "onnx", "onnxscript", "fastdecoders"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "none"
    return out


def _decoder_fingerprint(decoder: nn.Module, weights: bool) -> str:
    """A hash of the decoder's architecture and config (and, with ``weights``, of every parameter's bytes)."""
    h = hashlib.sha256()
    h.update(type(decoder).__name__.encode())
    config = decoder.config_dict() if hasattr(decoder, "config_dict") else {}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    if weights:
        for name, tensor in decoder.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def device_key(device: torch.device | str) -> str:
    """The device as it matters for speed: GPU name, or CPU model, core count and torch threads."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return f"cpu:{platform.processor() or platform.machine()}:{os.cpu_count()}cores:{torch.get_num_threads()}threads"


# -- onnxruntime ----------------------------------------------------------------------------------------------------


def _providers(device: torch.device) -> list[str]:
    ort = require("onnxruntime")
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    found = ", ".join(ort.get_available_providers())
    raise FastDecodersError(
        f"backend onnxruntime: expected an execution provider for {device.type}, got only {found} "
        "(install onnxruntime-gpu for cuda)"
    )


def exported_file(decoder: nn.Module, dtype: torch.dtype) -> Path:
    """The dynamic-shape ONNX export of ``decoder`` in ``dtype``, from the cache or exported (and verified) now."""
    if dtype not in (torch.float32, torch.float16):
        raise FastDecodersError(f"backend onnxruntime: expected float32 or float16, got {str(dtype)[6:]}")
    kind = graph_kind(decoder)
    key = {"weights": _decoder_fingerprint(decoder, weights=True), "dtype": str(dtype), **_versions()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = getattr(decoder, "registry_name", None) or decoder.arch
    path = cache_dir() / "onnx" / f"{name}-{digest}.onnx"
    if path.is_file():
        return path
    hw = (8, 8)  # a small example: the export is dynamic in batch, size (and frames)
    model, meta = export_model(decoder, hw, batch=1, frames=2, dynamic=True, fp16=dtype == torch.float16)
    report = verify(decoder, model, meta, real=False)  # random latents at two shapes: the export, not the photo
    if not report["ok"]:
        bad = next(c for c in report["checks"] if c["ok"] is False)
        raise FastDecodersError(f"backend onnxruntime: the {kind} export of {name} does not match PyTorch "
                                f"({bad['check']}: {bad.get('max_abs_diff', bad.get('reason'))})")  # fmt: skip
    return save_model(model, path)


class _RuntimeDecoder(LatentDecoder):
    """Base of the ONNX Runtime-backed decoders: holds the torch decoder (its attributes, parameters) and a session;
    follows the decode protocol (``decode_latents``, ``tile_job``) like any decoder."""

    def __init__(self, decoder: nn.Module, runner: Any, backend: str):
        super().__init__()
        self.torch_decoder = decoder
        self.runner = runner
        self.fastdecoders_backend = backend

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("torch_decoder"), name)

    @property
    def receptive_field(self) -> int | None:
        return self.torch_decoder.receptive_field

    @property
    def decodes_clips(self) -> bool:
        return self.torch_decoder.decodes_clips


class RuntimeImageDecoder(_RuntimeDecoder):
    """(B, C, h, w) latents -> (B, 3, H, W) RGB in [-1, 1], through ONNX Runtime."""

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.runner(latents)


class RuntimeClipDecoder(_RuntimeDecoder):
    """(B·T, C, h, w) latents + ``num_frames`` -> (B·T, 3, H, W), like SVD's decoder, through ONNX Runtime."""

    def forward(self, latents: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        return self.runner(latents, num_frames=num_frames)


class RuntimeVideoDecoder(_RuntimeDecoder):
    """(B, C, t, h, w) latents -> (B, 3, T, H, W): the whole clip in one streaming step, through ONNX Runtime."""

    latent_ndim = 5

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.runner.decode(latents, chunk=max(1, latents.shape[2]))

    def stream(self, latent_frames: int | None = None):
        """A streaming decoder (``push``/``flush``) running the exported step, like ``TAEHVDecoder.stream()``."""
        return self.runner.clip(latent_frames)


def runtime_decoder(decoder: nn.Module, backend: str = "onnxruntime", device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> nn.Module:  # fmt: skip
    """``decoder`` run by ``backend`` (``onnxruntime`` or ``openvino``): a module called like ``decoder``."""
    if backend not in RUNTIME_BACKENDS:
        raise FastDecodersError(f"backend: expected one of {', '.join(RUNTIME_BACKENDS)}, got {backend!r}")
    param = next(decoder.parameters())
    device = torch.device(device) if device is not None else param.device
    dtype = dtype or param.dtype
    reason = available(backend, decoder, device, dtype)
    if reason:
        raise FastDecodersError(reason)
    providers = _providers(device) if backend == "onnxruntime" else None
    kind = graph_kind(decoder)
    path = exported_file(decoder, dtype)
    decoder = decoder.eval().requires_grad_(False).to(device=device, dtype=dtype)
    if kind == "stream":
        return RuntimeVideoDecoder(decoder, OnnxStreamingDecoder(path, providers=providers, engine=backend), backend)
    runner = OnnxDecoder(path, providers=providers, engine=backend)
    cls = RuntimeClipDecoder if kind == "clip" else RuntimeImageDecoder
    return cls(decoder, runner, backend)


def available(backend: str, decoder: nn.Module, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``backend`` cannot run ``decoder`` here (None: it can)."""
    import importlib.util


    if backend not in RUNTIME_BACKENDS:
        return None
    for module, extra in (("onnx", "onnx"), ("onnxscript", "onnx"), (backend, backend.replace("runtime", ""))):
        if importlib.util.find_spec(module) is None:
            return f"{backend}: expected {module} to be installed, got none: pip install 'fastdecoders[{extra}]'"
    if backend == "onnxruntime":
        try:
            _providers(device)
        except FastDecodersError as e:
            return str(e)
    elif device.type != "cpu":
        return f"openvino: expected a cpu device (its CPU plugin), got {device.type}"
    if getattr(decoder, "arch", None) not in SUPPORTED:
        what = getattr(decoder, "arch", type(decoder).__name__)
        return f"{backend}: expected a decoder of architecture {', '.join(SUPPORTED)}, got {what!r} (no ONNX export)"
    if dtype not in (torch.float32, torch.float16):
        return f"{backend}: expected float32 or float16, got {str(dtype).removeprefix('torch.')}"
    return None


# -- auto -----------------------------------------------------------------------------------------------------------


def candidates(device: torch.device) -> list[str]:
    """Backends ``auto`` measures: torch eager and channels_last, ONNX Runtime, and on CPU OpenVINO; torch.compile only
    on CUDA (on CPU it compiles for minutes per shape and measured slower than ONNX Runtime, benchmarks/README.md).
    Those not installed or not applicable are skipped with the reason."""
    if device.type == "cuda":
        return ["eager", "channels_last", "onnxruntime", "compile"]
    return ["eager", "channels_last", "onnxruntime", "openvino"]


def _load_choices() -> dict[str, Any]:
    path = cache_dir() / "backends.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_choice(key: str, entry: dict[str, Any]) -> None:
    choices = _load_choices()
    choices[key] = entry
    atomic_write_text(cache_dir() / "backends.json", json.dumps(choices, indent=1, sort_keys=True))


def choice_key(decoder: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str,
               num_frames: int | None = None) -> str:  # fmt: skip
    """The cache key of an ``auto`` choice: decoder (architecture + config), shape, dtype, device, versions."""
    name = getattr(decoder, "registry_name", None) or getattr(decoder, "arch", type(decoder).__name__)
    parts = {"format": CHOICE_FORMAT, "decoder": f"{name}:{_decoder_fingerprint(decoder, weights=False)}",
             "shape": list(shape), "num_frames": num_frames, "dtype": str(dtype), "device": device_key(device),
             **_versions()}  # fmt: skip
    return json.dumps(parts, sort_keys=True)


def _time(fn, runs: int) -> float:
    fn()  # warm-up: first-call allocations, oneDNN primitive creation, ORT arena growth
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _candidate(decoder: nn.Module, backend: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """``decoder`` (a copy) prepared as ``fastdecoders.fast.optimize(decoder, backend, dtype, device)`` does."""
    decoder.eval().requires_grad_(False)
    fold_batchnorm(decoder)
    decoder.to(device=device, dtype=safe_half(decoder) if dtype == torch.float16 else dtype)
    if backend in RUNTIME_BACKENDS:
        return runtime_decoder(decoder, backend)
    return torch_path(decoder, backend)


def choose_backend(decoder: nn.Module, shape: tuple[int, ...], dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None, num_frames: int | None = None,
                   refresh: bool = False) -> dict[str, Any]:  # fmt: skip
    """{"backend", "ms": {backend: median ms}, "cached": bool} for latents of ``shape`` (measured or from the cache).

    ``decoder`` is not changed: each candidate runs on a copy.
    """
    import copy

    param = next(decoder.parameters())
    device = torch.device(device) if device is not None else param.device
    dtype = dtype or param.dtype
    key = choice_key(decoder, shape, dtype, device, num_frames)
    if not refresh and (entry := _load_choices().get(key)):
        return {**entry, "cached": True}
    z = torch.randn(shape, device=device, dtype=dtype)
    kwargs = {"num_frames": num_frames} if num_frames is not None else {}

    with torch.inference_mode():
        gflops = count_flops(lambda: decoder(z, **kwargs)) / 1e9
    if gflops < AUTO_MIN_GFLOPS:  # nothing to win that is worth an export: not measured, not cached
        return {"backend": "eager", "ms": {}, "cached": False, "gflops": gflops,
                "note": f"{gflops:.2g} GFLOPs per decode < {AUTO_MIN_GFLOPS:g}: eager"}  # fmt: skip
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    timings: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for backend in candidates(device):
        reason = available(backend, decoder, device, dtype)
        if reason:
            skipped[backend] = reason
            continue
        candidate = _candidate(copy.deepcopy(decoder), backend, dtype, device)

        def step(m=candidate):
            with torch.inference_mode():
                m(z, **kwargs)
            sync()

        timings[backend] = _time(step, AUTO_RUNS)
        del candidate
    best = min(timings, key=timings.get)
    entry = {"backend": best, "ms": timings, "skipped": skipped, "gflops": gflops,
             "measured": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    _save_choice(key, entry)
    return {**entry, "cached": False}


#: ``auto`` measures at the decode's shape capped at this many latent pixels per side and frames per clip: the
#: ranking does not change with size (a compute-bound decode), and measuring must not cost a huge or long decode.
AUTO_MAX_SIDE, AUTO_MAX_FRAMES = 64, 4


def call_shape(decoder: nn.Module, latents: torch.Tensor) -> tuple[tuple[int, ...], int | None]:
    """(latents shape ``auto`` measures at, num_frames) for ``decode``'s latents: one image of an NCHW batch, the clip
    for video decoders, one clip's (T, C, h, w) frames for image and SVD-style decoders given video latents; sides
    capped at ``AUTO_MAX_SIDE`` latent pixels and clips at ``AUTO_MAX_FRAMES`` frames."""
    h, w = (min(n, AUTO_MAX_SIDE) for n in latents.shape[-2:])
    if latents.ndim == 4:
        return (1, latents.shape[1], h, w), None
    if decoder.latent_ndim == 5:  # forward takes (B, C, t, h, w) clips
        return (1, latents.shape[1], min(latents.shape[2], AUTO_MAX_FRAMES), h, w), None
    t = min(latents.shape[1], AUTO_MAX_FRAMES)  # (B, T, C, h, w) frames first: one clip at a time
    return (t, latents.shape[2], h, w), t if decoder.decodes_clips else None
