"""The registry of named decoders. A named decoder is data: architecture + config + latent space + weights source.

Each model file registers its own variants at its bottom (``fastdecoders.models`` imports them all, and importing
``fastdecoders`` imports ``fastdecoders.models``); this module is a leaf that knows nothing model-specific. Building a
decoder from a spec is ``fastdecoders.models.build_decoder``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import LatentSpace, get_latent_space


@dataclass(frozen=True)
class DecoderSpec:
    name: str
    arch: str
    config: Any
    #: name of the latent space the decoder reads (see ``fastdecoders.latents``).
    latents: str
    #: a small config of the same architecture, used by tests.
    tiny: Any
    description: str = ""
    #: upstream weights-file stem, looked up as ``<stem>.safetensors`` / ``<stem>.pth`` on the weights search path.
    weights: str | None = None
    #: a hub repo holding the weights (diffusers AutoencoderTiny layout or our safetensors), for users who are online.
    hub_id: str | None = None
    #: a fastdecoders file made in this repository, relative to its shipped-weights folder (``weights/`` of a
    #: checkout, or the same relative path under a folder of the weights search path): the name loads that file.
    #: A spec with ``config=None`` is a composite (a switch: a gate naming two other decoders), loadable only.
    file: str | None = None

    @property
    def latent_space(self) -> LatentSpace:
        return get_latent_space(self.latents)

    @property
    def has_weights(self) -> bool:
        return self.weights is not None or self.hub_id is not None or self.file is not None

    @property
    def composite(self) -> bool:
        """No architecture of its own to build at random (a switch file): ``load_decoder`` only."""
        return self.config is None


_REGISTRY: dict[str, DecoderSpec] = {}


def register(spec: DecoderSpec) -> DecoderSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"decoder {spec.name!r} is registered twice")
    if spec.config is None and spec.file is None:
        raise ValueError(f"decoder {spec.name!r}: a spec without an architecture config must name its file")
    get_latent_space(spec.latents)  # fail at import time on a typo
    _REGISTRY[spec.name] = spec
    return spec


def list_decoders(composites: bool = False) -> list[str]:
    """Registered names that ``build_decoder`` can make (each has a tiny test config); ``composites=True`` adds the
    composite ones (switch files), which only ``load_decoder`` loads."""
    return [name for name, spec in _REGISTRY.items() if composites or not spec.composite]


def get_spec(name: str) -> DecoderSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FastDecodersError(unknown_name_message(name)) from None


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def unknown_name_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"{name!r} is not a registered decoder nor an existing path; {hint}known decoders: {', '.join(_REGISTRY)}"
