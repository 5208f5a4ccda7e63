"""``--backend`` for the decode and roundtrip verbs: the argument, applying it, and what a verb reports about it."""

from __future__ import annotations

from typing import Any

from torch import nn

from fastdecoders.backends import BACKENDS
from fastdecoders.fast import optimize


def add_backend_argument(parser: Any) -> None:
    """``--backend`` for the decode/roundtrip verbs (bench takes a comma list of its own)."""
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="auto: the fastest measured here for this decoder, shape and dtype (measured once, "
                        "cached in ~/.cache/fastdecoders/backends.json; decodes under 1 GFLOP stay eager); "
                        "onnxruntime needs the onnx extra, openvino the openvino extra")  # fmt: skip


def apply_backend(decoder: nn.Module, backend: str, shape: tuple[int, ...] | None = None,
                  num_frames: int | None = None) -> nn.Module:  # fmt: skip
    """``fastdecoders.fast.optimize(decoder, backend)`` for a CLI verb; ``shape`` is what ``auto`` measures at."""
    return optimize(decoder, backend=backend, shape=shape, num_frames=num_frames)


def describe(decoder: nn.Module) -> dict[str, Any]:
    """What a verb reports about the backend it ran: {"backend", "auto": measurement or None}."""
    auto = getattr(decoder, "fastdecoders_auto", None)
    return {"backend": getattr(decoder, "fastdecoders_backend", "eager"), "auto": auto}
