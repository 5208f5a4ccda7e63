"""The registry of named decoders. A named decoder is data: architecture + config + latent space + weights source.

Each model file registers its own variants at its bottom; this module knows nothing model-specific.
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

    @property
    def latent_space(self) -> LatentSpace:
        return get_latent_space(self.latents)

    @property
    def has_weights(self) -> bool:
        return self.weights is not None or self.hub_id is not None


_REGISTRY: dict[str, DecoderSpec] = {}


def register(spec: DecoderSpec) -> DecoderSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"decoder {spec.name!r} is registered twice")
    get_latent_space(spec.latents)  # fail at import time on a typo
    _REGISTRY[spec.name] = spec
    return spec


def _populate() -> None:
    import fastdecoders.models  # noqa: F401  (model files register their variants on import)


def list_decoders() -> list[str]:
    _populate()
    return list(_REGISTRY)


def get_spec(name: str) -> DecoderSpec:
    _populate()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FastDecodersError(unknown_name_message(name)) from None


def is_registered(name: str) -> bool:
    _populate()
    return name in _REGISTRY


def unknown_name_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"{name!r} is not a registered decoder nor an existing path; {hint}known decoders: {', '.join(_REGISTRY)}"


def build_decoder(name_or_spec: str | DecoderSpec, tiny: bool = False, config: Any = None):
    """A randomly initialised decoder of a registered name (its tiny test config with ``tiny=True``)."""
    from fastdecoders.models import ARCHITECTURES

    spec = name_or_spec if isinstance(name_or_spec, DecoderSpec) else get_spec(name_or_spec)
    cls = ARCHITECTURES[spec.arch]
    decoder = cls(config if config is not None else (spec.tiny if tiny else spec.config))
    decoder.latent_space_name = spec.latents
    decoder.registry_name = spec.name
    return decoder
