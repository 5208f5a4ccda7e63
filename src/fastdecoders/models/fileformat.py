"""The decoder file format, below every model (like diffusers' ``ModelMixin``): read, strictly load and write.

A fastdecoders file is a ``.safetensors`` whose metadata key ``fastdecoders`` holds a JSON header: ``format``,
``arch``, ``config`` (the dataclass config as plain data), ``latents``, ``name`` and any extras (training reports…).
A folder path gets ``model.safetensors`` plus the same header as ``config.json``. Pickled ``.pth``/``.pt`` files are
only read with ``torch.load(..., weights_only=True)``. Which file a *name* means (search path, hub) is
``fastdecoders.weights``' job; this module only sees paths and classes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fastdecoders.errors import FastDecodersError, require_finite
from fastdecoders.io import (
    atomic_path,
    atomic_write_text,
    check_declared_size,
    load_pickle,
    read_safetensors,
    readable_file,
)

METADATA_KEY = "fastdecoders"
FORMAT_VERSION = 1


# -- config dicts -----------------------------------------------------------------------------------------------------


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) dataclass config; tuples become lists."""
    return dataclasses.asdict(config)


def config_from_saved(config_class: type, values: dict[str, Any]) -> Any:
    """A saved model config (a file header's JSON, the inverse of ``config_to_dict``) rebuilt: lists go back to
    tuples; unknown keys are an error. (User-written configs are checked by ``fastdecoders.config`` instead.)"""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise FastDecodersError(f"unknown {config_class.__name__} keys {unknown}; expected some of {sorted(fields)}")
    return config_class(**{k: as_tuples(v) for k, v in values.items()})


def as_tuples(value: Any) -> Any:
    """Lists (and tuples) -> tuples, recursively: JSON and torch.save hand back lists where tuples went in."""
    return tuple(as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


# -- reading ----------------------------------------------------------------------------------------------------------


def read_state_dict(
    path: str | os.PathLike, what: str = "weights file"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, safetensors metadata) of a ``.safetensors`` or pickled ``.pth``/``.pt`` file, on CPU.

    ``what`` names the file in errors ("latents file" …). Its declared size is checked against memory first; pickles
    are read with ``weights_only=True`` and refused in one line when they need code.
    """
    path = readable_file(path, what)
    check_declared_size(path, what)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    state = load_pickle(path, what)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FastDecodersError(f"{path} does not hold a flat state dict of tensors")
    return dict(state), {}


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``; any missing, unexpected or mis-shaped key is one error naming it."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
        raise FastDecodersError(f"{source} does not fit {type(module).__name__}: {'; '.join(parts)}")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise FastDecodersError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
            )
    # copy into the (float32) parameters: upstream files are bf16/fp16
    module.load_state_dict(state, strict=True)


def read_header(metadata: Mapping[str, str]) -> dict[str, Any] | None:
    """The fastdecoders header of a file's safetensors metadata, or None for other files (upstream TAESD …)."""
    return json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else None


def decoder_from_header(header: dict[str, Any], architectures: Mapping[str, type], source: str) -> Any:
    """A randomly initialised decoder of the header's ``arch`` (one of ``architectures``) and config, told its latent
    space and name."""
    arch = header.get("arch")
    if arch not in architectures:
        raise FastDecodersError(f"{source}: unknown architecture {arch!r}; known: {', '.join(architectures)}")
    cls = architectures[arch]
    decoder = cls(config_from_saved(cls.config_class, header.get("config", {})))
    decoder.latent_space_name = header.get("latents")
    decoder.registry_name = header.get("name")
    return decoder


def load_file(path: str | os.PathLike, architectures: Mapping[str, type]) -> Any:
    """A decoder from one of our files (or a folder holding ``model.safetensors``), strictly loaded; its ``arch``
    must be one of ``architectures``."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    state, metadata = read_state_dict(path)
    header = read_header(metadata)
    if header is None:
        raise FastDecodersError(f"{path} is not a fastdecoders file (no '{METADATA_KEY}' metadata)")
    decoder = decoder_from_header(header, architectures, str(path))
    load_strict(decoder, state, str(path))
    return decoder


# -- writing ----------------------------------------------------------------------------------------------------------


def check_finite_state(state: dict[str, torch.Tensor], what: str) -> None:
    """One error naming the first weight that holds NaN/Inf (a diverged run must not ship as a model file)."""
    for key, tensor in state.items():
        require_finite(tensor.detach(), f"{what}: weight {key!r}")


def save_decoder(decoder: torch.nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> str:
    """Save as ``.safetensors`` with arch, config and latent space in the metadata; a folder path gets
    ``model.safetensors`` + ``config.json``. Written to a temp file, then renamed."""
    path = Path(path)
    header = {
        "format": FORMAT_VERSION,
        "arch": decoder.arch,
        "config": decoder.config_dict(),
        "latents": getattr(decoder, "latent_space_name", None),
        "name": getattr(decoder, "registry_name", None),
        **(extra or {}),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in decoder.state_dict().items()}
    check_finite_state(state, f"refusing to save {path}")
    metadata = {METADATA_KEY: json.dumps(header)}
    if path.suffix != ".safetensors":  # a folder
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / "config.json", json.dumps(header, indent=2))
        path = path / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return str(path)
