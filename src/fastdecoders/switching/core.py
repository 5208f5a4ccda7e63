"""The switch decoder: a light and a heavy decoder behind one ``Decoder``, a gate choosing per item.

``SwitchDecoder(z)`` scores every item of the batch with the gate and decodes the items scoring above
``threshold`` with the heavy decoder, the others with the light one: each output is exactly what that decoder
returns for the sub-batch routed to it (bit for bit), in the batch's order, and a sub-batch that is empty is never
decoded. Video latents (NCTHW, causal decoders) are routed per temporal chunk (``fastdecoders.switching.video``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import atomic_path
from fastdecoders.latents import get_latent_space
from fastdecoders.models.base import Decoder
from fastdecoders.models.fileformat import FORMAT_VERSION, METADATA_KEY, config_to_dict
from fastdecoders.models.tae import TAEDecoder
from fastdecoders.prune.ops import feature_points
from fastdecoders.registry import is_registered
from fastdecoders.switching.gate import Gate, GateConfig
from fastdecoders.switching.video import decode_chunks

#: the heavy decoder named in a switch file to mean "the diffusers pipeline's own VAE" (bound by ``use(pipe, ...)``).
PIPELINE_VAE = "pipeline:vae"


@dataclass(frozen=True)
class SwitchConfig:
    #: the light and heavy decoders: registry names or paths (relative paths: to the switch file's folder first).
    light: str
    heavy: str
    #: "latent" or "features" (the light decoder's early features; see ``feature_point``).
    input: str = "latent"
    #: items whose gate score (predicted ``score``, dB) is above this go to the heavy decoder.
    threshold: float = math.inf
    #: the light decoder's module whose output the "features" gate reads (a TAE child index, e.g. "5").
    feature_point: str | None = None
    gate_in_channels: int = 4
    gate_width: int = 32
    gate_hidden: int = 32
    #: video: latent frames per routed chunk, and latent frames of context a decoder re-reads when it resumes.
    chunk: int = 1
    context: int = 1
    #: what the gate predicts (dB): "deficit" (light vs heavy output, label-free) or "gain" (heavy's PSNR gain over
    #: light against the photo); see ``fit.fit_switch``. Routing is the same: above ``threshold`` goes heavy.
    score: str = "deficit"

    @property
    def gate_config(self) -> GateConfig:
        return GateConfig(self.gate_in_channels, self.input, self.gate_width, self.gate_hidden)


def _label(decoder: nn.Module | None, fallback: str) -> str:
    return getattr(decoder, "registry_name", None) or fallback


def check_pair(light: nn.Module, heavy: nn.Module | None) -> str:
    """The latent space both decoders read; one clear error when they differ."""
    a = getattr(light, "latent_space_name", None)
    if a is None:
        raise FastDecodersError(f"switch: the light decoder {_label(light, 'light')} does not say its latent space")
    if heavy is None:
        return get_latent_space(a).name
    b = getattr(heavy, "latent_space_name", None)
    if b is None or get_latent_space(a).name != get_latent_space(b).name:
        raise FastDecodersError(
            f"switch: light and heavy decoders must read the same latent space, got light "
            f"{_label(light, 'light')} ({a}) and heavy {_label(heavy, 'heavy')} ({b})"
        )
    return get_latent_space(a).name


# -- the light decoder in two parts (the "features" gate) --------------------------------------------------------------


def check_staged(light: nn.Module, point: str) -> None:
    if not isinstance(light, TAEDecoder):
        raise FastDecodersError(
            f"switch: a 'features' gate needs a light decoder that runs as a sequence of layers (a TAE), got "
            f"{type(light).__name__}; use the 'latent' gate"
        )
    if point not in dict(light.named_children()):
        raise FastDecodersError(f"switch: the light decoder has no layer {point!r} to read features from")


def light_head(light: TAEDecoder, z: torch.Tensor, point: str) -> torch.Tensor:
    """The light decoder's layers up to and including ``point``: (N, C, h, w) latents -> features."""
    x = z
    for name, layer in light.named_children():
        x = layer(x)
        if name == point:
            return x
    raise FastDecodersError(f"switch: the light decoder has no layer {point!r}")


def light_tail(light: TAEDecoder, x: torch.Tensor, point: str) -> torch.Tensor:
    """The rest of the light decoder after ``point``: the same operations, in the same order, as its ``forward``."""
    after = False
    for name, layer in light.named_children():
        if after:
            x = layer(x)
        after = after or name == point
    return x.mul(2).sub(1)


def default_feature_point(light: nn.Module) -> str:
    """The end of the light decoder's first stage (its latent-resolution features)."""
    return feature_points(light)[0]


class PipelineVAE(nn.Module):
    """A diffusers pipeline's own VAE as a switch's heavy decoder: (B, C, h, w) diffusion-space latents ->
    ``vae.decode(raw).sample`` in [-1, 1], raw latents made with the numbers the pipeline adapter uses (the
    checkpoint's own scale/shift or mean/std). The VAE is referenced, not registered as a submodule, so the switch's
    state and parameter count stay its own."""

    def __init__(self, vae: nn.Module, space: Any, mean: Any = None, std: Any = None):
        super().__init__()
        self.__dict__["vae"] = vae
        self.space, self.mean, self.std = space, mean, std
        self.latent_space_name = space.name
        self.registry_name = PIPELINE_VAE

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        raw = self.space.to_raw(latents.to(self.vae.dtype), mean=self.mean, std=self.std)
        return self.vae.decode(raw).sample


def _decode(decoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """A routed sub-batch through the decode protocol (``decode_latents``); a bare module (``PipelineVAE``): called."""
    decode = getattr(decoder, "decode_latents", None)
    return decode(z) if decode is not None else decoder(z)


class SwitchDecoder(Decoder):
    """(B, C, h, w) diffusion-space latents -> (B, 3, f·h, f·w) RGB in [-1, 1], each item by the light or the heavy
    decoder as the gate decides; video (B, C, t, h, w) -> (B, 3, T, f·h, f·w) routed per chunk of latent frames.

    After a call, ``last_routes`` holds the routing: a (B,) bool tensor (True = heavy) for images, a (B, chunks) one
    for video, and ``last_scores`` the gate's scores.
    """

    arch = "switch"
    config_class = SwitchConfig

    def __init__(self, config: SwitchConfig, light: Decoder, heavy: Decoder | None, gate: Gate):
        super().__init__(config)
        self.latents_name = check_pair(light, heavy)
        self.light = light
        self.heavy = heavy  # None: the pipeline's VAE, bound later by ``bind_heavy``
        self.gate = gate
        self.latent_ndim = getattr(light, "latent_ndim", 4)
        # the decode protocol (models/protocol.py) follows latent_ndim: clips (NCTHW) when the light decoder takes them
        if getattr(light, "decodes_clips", False) and self.latent_ndim == 4:
            raise FastDecodersError(
                f"switch: routing a decoder that decodes the frames of a clip together ({type(light).__name__}) would "
                f"split its clips; use an image decoder or a causal video decoder (taehv) as light"
            )
        if config.input == "features":
            check_staged(light, config.feature_point or "")
        self.latent_space_name = self.latents_name
        self.registry_name = None
        self.last_routes: torch.Tensor | None = None
        self.last_scores: torch.Tensor | None = None

    @property
    def latent_channels(self) -> int:
        return get_latent_space(self.latents_name).channels

    @property
    def threshold(self) -> float:
        return self.config.threshold

    def bind_heavy(self, heavy: nn.Module) -> None:
        """Set the heavy decoder (e.g. the pipeline's own VAE); it must read the light decoder's latent space."""
        check_pair(self.light, heavy)
        self.heavy = heavy

    def _heavy(self) -> Decoder:
        if self.heavy is None:
            raise FastDecodersError(
                f"switch: its heavy decoder is {self.config.heavy!r}; bind one first (fastdecoders.use(pipe, switch) "
                f"binds the pipeline's VAE, or switch.bind_heavy(decoder))"
            )
        return self.heavy

    @torch.no_grad()
    def route(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(scores (B,), heavy mask (B,) bool, light features or None) for (B, C, h, w) latents."""
        feats = None
        if self.config.input == "features":
            feats = light_head(self.light, z, self.config.feature_point)
            scores = self.gate(feats)
        else:
            scores = self.gate(z)
        return scores, scores > self.config.threshold, feats

    def _check(self, z: torch.Tensor) -> None:
        space = get_latent_space(self.latents_name)
        space.check_latents(z, "switch latents")

    @torch.no_grad()
    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        self._check(latents)
        if latents.ndim == 5:
            out, routes, scores = decode_chunks(self, latents)
            self.last_routes, self.last_scores = routes, scores
            return out
        b, _, h, w = latents.shape
        f = get_latent_space(self.latents_name).spatial_factor
        if b == 0:
            self.last_routes = torch.zeros(0, dtype=torch.bool)
            self.last_scores = latents.new_zeros(0)
            return latents.new_empty(0, 3, f * h, f * w)
        scores, heavy_mask, feats = self.route(latents)
        self.last_routes, self.last_scores = heavy_mask.cpu(), scores.cpu()
        heavy_idx = heavy_mask.nonzero().squeeze(1)
        light_idx = (~heavy_mask).nonzero().squeeze(1)
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        if light_idx.numel():
            if feats is None:
                y = _decode(self.light, latents if light_idx.numel() == b else latents[light_idx])
            else:
                y = light_tail(self.light, feats if light_idx.numel() == b else feats[light_idx],
                               self.config.feature_point)  # fmt: skip
            parts.append((light_idx, y))
        if heavy_idx.numel():
            parts.append((heavy_idx, _decode(self._heavy(), latents if heavy_idx.numel() == b else latents[heavy_idx])))
        if len(parts) == 1:  # all one way: that decoder's own output tensor
            return parts[0][1]
        out = parts[0][1].new_empty(b, *parts[0][1].shape[1:])
        for idx, y in parts:
            out[idx] = y.to(out.dtype)
        return out

    def save_pretrained(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> str:
        """Write the gate and config to ``path`` (.safetensors, atomically; ``extra`` goes into the header, e.g. the
        fit report); the decoders are referenced by name or by a path relative to the file, not copied.
        ``fastdecoders.switching.file.load_switch`` (through ``load_decoder``) reads it back."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise FastDecodersError(f"switch file: expected a path ending in .safetensors, got {path}")
        config = config_to_dict(self.config)
        config["light"] = _reference(self.config.light, path, "light")
        config["heavy"] = _reference(self.config.heavy, path, "heavy")
        header = {"format": FORMAT_VERSION, "arch": "switch", "config": config, "latents": self.latents_name,
                  "name": getattr(self, "registry_name", None), **(extra or {})}  # fmt: skip
        state = {k: v.detach().contiguous().cpu() for k, v in self.gate.state_dict().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(header)})
        return str(path)


def _reference(target: str, path: Path, role: str) -> str:
    """How a switch file names a decoder: registry names as they are, files relative to the switch file; a name
    that is neither would make a file that cannot be loaded, so it is refused here."""
    if is_registered(target) or target == PIPELINE_VAE:
        return target
    if not Path(target).exists():
        raise FastDecodersError(
            f"switch file: its {role} decoder is named {target!r}, which is neither a registered decoder nor a file; "
            f"save that decoder (save_decoder) and build the switch from its path"
        )
    return os.path.relpath(Path(target).resolve(), path.resolve().parent)

