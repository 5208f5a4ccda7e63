"""Reading switch files: the gate's weights in safetensors, the config (threshold, gate shape, the names of the light
and heavy decoders) and the fit report in the metadata, like every fastdecoders weights file; ``load_decoder`` reads
them through ``load_switch``, so every verb takes a switch file where it takes a decoder. Writing them is
``SwitchDecoder.save_pretrained`` (``switching.core``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.models.fileformat import config_from_saved, load_strict
from fastdecoders.registry import is_registered
from fastdecoders.switching.core import PIPELINE_VAE, SwitchConfig, SwitchDecoder
from fastdecoders.switching.gate import Gate


def _resolve(target: str, folder: Path) -> str:
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
    config = config_from_saved(SwitchConfig, header.get("config", {}))
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
