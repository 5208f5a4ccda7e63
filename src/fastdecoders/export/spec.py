"""What the export modules share (a leaf below ``onnx``, ``stream`` and ``runtime``): the metadata key and format
version, the dynamic shape range, ``GraphSpec`` (one graph to export) and ``require`` (an optional dependency or one
error line naming its extra)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError

METADATA_KEY = "fastdecoders"
FORMAT_VERSION = 1
MAX_BATCH, MAX_SIDE, MAX_FRAMES = 64, 512, 256


@dataclass
class GraphSpec:
    """One graph to export: the module, example inputs, names, dynamic axes and the shape range it accepts."""

    module: nn.Module
    example: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    #: torch.export ``dynamic_shapes`` mirroring the forward's arguments ({axis: Dim} per tensor); () when static.
    dynamic_shapes: tuple
    #: input name -> (min shape, max shape), inclusive, what ``OnnxDecoder`` accepts.
    ranges: dict[str, tuple[list[int], list[int]]]
    extra: dict[str, Any] = field(default_factory=dict)


#: module -> the pip extra that brings it.
EXTRAS = {"onnxruntime": "onnx", "onnx": "onnx", "onnxscript": "onnx", "openvino": "openvino"}


def require(module: str) -> Any:
    """Import ``module`` or fail with one line naming the extra to install (the CLI exits 2)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module, module)
        raise FastDecodersError(
            f"expected {module} to be installed for ONNX export/runtime, got none: pip install 'fastdecoders[{extra}]'"
        ) from None
