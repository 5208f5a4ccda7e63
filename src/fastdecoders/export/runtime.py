"""Run an exported decoder in ONNX Runtime (or OpenVINO): shape checks from the file's metadata, torch tensors in/out.

``OnnxDecoder(path)`` decodes ``image`` and ``clip`` exports; ``OnnxStreamingDecoder`` (``fastdecoders.export.stream``)
runs the streaming loop of ``stream`` exports; both take ``engine="onnxruntime"`` (default) or ``"openvino"``.
Latents outside the exported range raise ``FastDecodersError`` with one line naming the range, before the engine
sees them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.export.spec import METADATA_KEY, require
from fastdecoders.io import atomic_path


def read_metadata(model_or_path: Any) -> dict[str, Any]:
    """The ``fastdecoders`` metadata of an ONNX file, ``onnx.ModelProto`` or ``InferenceSession``."""
    if hasattr(model_or_path, "get_modelmeta"):  # an InferenceSession
        props = model_or_path.get_modelmeta().custom_metadata_map
    else:
        onnx = require("onnx")
        model = model_or_path if hasattr(model_or_path, "graph") else onnx.load(str(model_or_path))
        props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise FastDecodersError(f"expected an ONNX file exported by `fastdecoders export`, got one without "
                                f"'{METADATA_KEY}' metadata: {model_or_path}")  # fmt: skip
    return json.loads(props[METADATA_KEY])


ENGINES = ("onnxruntime", "openvino")


def session(model: Any, threads: int | None = None, providers: list[str] | None = None):
    """An ``onnxruntime.InferenceSession`` of a path or serialized model (all graph optimizations on)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is None:
        threads = torch.get_num_threads()  # the same thread budget torch has: side-by-side numbers stay fair
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = str(model) if isinstance(model, (str, os.PathLike)) else model
    return ort.InferenceSession(source, options, providers=providers or ["CPUExecutionProvider"])


class Runner:
    """One exported graph in an inference engine: ``run({input name: array}) -> [output arrays]`` in graph order.

    ``onnxruntime`` (CPU, or the providers given) or ``openvino`` (its CPU plugin, float32 inference precision), each
    with torch's thread count unless ``threads`` is given.
    """

    def __init__(self, model: Any, engine: str = "onnxruntime", threads: int | None = None,
                 providers: list[str] | None = None):  # fmt: skip
        if engine not in ENGINES:
            raise FastDecodersError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
        self.engine = engine
        threads = threads or torch.get_num_threads()
        if engine == "onnxruntime":
            self._session = session(model, threads, providers)
            self.meta = read_metadata(self._session)
            self.input_names = [i.name for i in self._session.get_inputs()]
            return
        ov = require("openvino")
        onnx = require("onnx")
        proto = onnx.load(str(model)) if isinstance(model, (str, os.PathLike)) else onnx.load_from_string(model)
        self.meta = read_metadata(proto)
        self.input_names = [i.name for i in proto.graph.input]
        compiled = ov.Core().compile_model(
            ov.Core().read_model(proto.SerializeToString(), b""), "CPU",
            {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"},
        )  # fmt: skip
        self._request, self._outputs = compiled.create_infer_request(), compiled.outputs

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.engine == "onnxruntime":
            return self._session.run(None, feed)
        results = self._request.infer(feed)
        return [np.array(results[o], copy=True) for o in self._outputs]  # copies: the request reuses its buffers


def check_shape(shape: tuple[int, ...], lo: list[int], hi: list[int], what: str, hint: str = "") -> None:
    """One line when ``shape`` is outside [lo, hi] (per axis, inclusive)."""
    ok = len(shape) == len(lo) and all(a <= n <= b for n, a, b in zip(shape, lo, hi, strict=True))
    if not ok:
        ranges = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in zip(lo, hi, strict=True))
        raise FastDecodersError(f"{what}: expected latents of shape ({ranges}), got {tuple(shape)}{hint}")


def static_hint(meta: dict[str, Any], name: str) -> str:
    lo, hi = meta["inputs"][name]["min"], meta["inputs"][name]["max"]
    return "; exported for this one shape: re-export with --dynamic-shape or --size" if lo == hi else ""


class OnnxDecoder:
    """An exported ``image`` or ``clip`` decoder in ONNX Runtime, called like the torch decoder.

    ``image``: (B, C, h, w) -> (B, 3, H, W). ``clip``: (B·T, C, h, w) plus ``num_frames`` (SVD's convention) or
    (B, T, C, h, w) -> the same layout back. Output is RGB in [-1, 1] as a float tensor of the input's dtype and device.
    """

    def __init__(self, model: Any, threads: int | None = None, providers: list[str] | None = None,
                 engine: str = "onnxruntime"):  # fmt: skip
        self.runner = Runner(model, engine, threads, providers)
        self.meta = self.runner.meta
        self.name = str(model) if isinstance(model, (str, os.PathLike)) else "onnx model"
        if self.meta["kind"] not in ("image", "clip"):
            raise FastDecodersError(f"OnnxDecoder: expected an image or clip export, got a {self.meta['kind']} "
                                    "export (use OnnxStreamingDecoder)")  # fmt: skip
        self.input = self.runner.input_names[0]
        self.np_dtype = np.float16 if self.meta["dtype"] == "float16" else np.float32

    def __call__(self, latents: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        x = latents
        frames_first = self.meta["kind"] == "clip" and x.ndim == 4
        if frames_first:  # (B·T, C, h, w) + num_frames -> (B, T, C, h, w)
            t = x.shape[0] if num_frames is None else num_frames
            if t < 1 or x.shape[0] % t:
                raise FastDecodersError(f"{self.name}: {x.shape[0]} latent frames do not split into clips of "
                                        f"num_frames={num_frames}")  # fmt: skip
            x = x.unflatten(0, (-1, t))
        lo, hi = self.meta["inputs"]["latents"]["min"], self.meta["inputs"]["latents"]["max"]
        check_shape(tuple(x.shape), lo, hi, self.name, static_hint(self.meta, "latents"))
        feed = x.detach().to("cpu").numpy().astype(self.np_dtype, copy=False)
        out = torch.from_numpy(self.runner.run({self.input: feed})[0])
        if frames_first:
            out = out.flatten(0, 1)
        return out.to(device=latents.device, dtype=latents.dtype)


def save_model(model: Any, path: str | os.PathLike) -> Path:
    """Write an ``onnx.ModelProto`` to ``path`` atomically (one file: weights inside)."""
    onnx = require("onnx")
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))
    return Path(path)
