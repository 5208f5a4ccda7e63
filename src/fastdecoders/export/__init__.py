"""ONNX export of decoders and their ONNX Runtime counterparts (needs the ``onnx`` extra: onnx, onnxruntime)."""

from __future__ import annotations

from fastdecoders.export.onnx import SUPPORTED, export_model, graph_kind
from fastdecoders.export.runtime import OnnxDecoder, read_metadata, save_model

__all__ = ["SUPPORTED", "OnnxDecoder", "export_model", "graph_kind", "read_metadata", "save_model"]
