"""Switch files: the gate's weights in safetensors, the config (threshold, gate shape, the names of the light and
heavy decoders) and the fit report in the metadata, like every fastdecoders weights file; ``load_decoder`` reads
them, so every verb takes a switch file where it takes a decoder."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import atomic_path
from fastdecoders.models.fileformat import FORMAT_VERSION, METADATA_KEY, config_from_dict, config_to_dict, load_strict
from fastdecoders.switching.core import PIPELINE_VAE, SwitchConfig, SwitchDecoder
from fastdecoders.switching.gate import Gate


def _reference(target: str, path: Path, role: str) -> str:
    """How the switch file names a decoder: registry names as they are, files relative to the switch file; a name
    that is neither would make a file that cannot be loaded, so it is refused here."""
    from fastdecoders.registry import is_registered

    if is_registered(target) or target == PIPELINE_VAE:
        return target
    if not Path(target).exists():
        raise FastDecodersError(
            f"switch file: its {role} decoder is named {target!r}, which is neither a registered decoder nor a file; "
            f"save that decoder (save_decoder) and build the switch from its path"
        )
    return os.path.relpath(Path(target).resolve(), path.resolve().parent)


def save_switch(sw: SwitchDecoder, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> str:
    """Write the gate and config to ``path`` (.safetensors, atomically); the decoders are referenced, not copied."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise FastDecodersError(f"switch file: expected a path ending in .safetensors, got {path}")
    config = config_to_dict(sw.config)
    config["light"] = _reference(sw.config.light, path, "light")
    config["heavy"] = _reference(sw.config.heavy, path, "heavy")
    header = {"format": FORMAT_VERSION, "arch": "switch", "config": config, "latents": sw.latents_name,
              "name": getattr(sw, "registry_name", None), **(extra or {})}  # fmt: skip
    state = {k: v.detach().contiguous().cpu() for k, v in sw.gate.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(header)})
    return str(path)


def _resolve(target: str, folder: Path) -> str:
    from fastdecoders.registry import is_registered

    if is_registered(target) or Path(target).is_absolute():
        return target
    local = folder / target
    return str(local) if local.exists() else target


def load_switch(path: Path, header: dict[str, Any], state: dict[str, Any], weights_dir: str | os.PathLike | None,
                load_decoder: Callable[..., nn.Module]) -> SwitchDecoder:  # fmt: skip
    """A ``SwitchDecoder`` from a switch file's header and gate weights; its light and heavy decoders are loaded by
    name or path (relative to the file first; names on the weights path, ``weights_dir`` first). Missing decoders
    are one error naming them. ``load_decoder`` is ``fastdecoders.weights.load_decoder``, passed in by it (it loads
    switch files; switching sits above it)."""
    config = config_from_dict(SwitchConfig, header.get("config", {}))
    decoders, missing = {}, []
    for role in ("light", "heavy"):
        target = getattr(config, role)
        if role == "heavy" and target == PIPELINE_VAE:
            decoders[role] = None
            continue
        try:
            decoders[role] = load_decoder(_resolve(target, path.parent), weights_dir=weights_dir)
        except FastDecodersError as e:
            missing.append(f"{role} decoder {target!r} ({e})")
    if missing:
        raise FastDecodersError(f"switch file {path}: cannot load its {' and its '.join(missing)}")
    gate = Gate(config.gate_config)
    load_strict(gate, state, str(path))
    sw = SwitchDecoder(config, decoders["light"], decoders["heavy"], gate)
    sw.registry_name = header.get("name")
    return sw.eval()
