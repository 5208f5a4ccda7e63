"""``diffusers-vae``: the decode path of an original diffusers VAE as a fastdecoders ``Decoder`` (the teachers).

Benchmarks and distillation compare every student with the VAE it replaces; wrapping that VAE in the same
``Decoder`` contract lets the registry, weights I/O and ``fastdecoders bench`` treat it like any other decoder.

``forward`` takes diffusion-space latents, maps them to raw latents with the latent space's ``to_raw`` (LTX: the
checkpoint's ``latents_mean``/``latents_std`` buffers, as its pipeline does) and returns ``vae.decode(raw).sample``:
RGB in [-1, 1]; NCHW for image VAEs, NCTHW for Wan/LTX, and SVD takes (B·T, C, h, w) + ``num_frames`` like its
pipeline. The encoder is dropped at build time: a decoder never encodes, and its weights would get no gradient.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import LATENT_SPACES, LatentSpace, get_latent_space
from fastdecoders.models.base import Decoder
from fastdecoders.models.fileformat import as_tuples, load_strict, read_state_dict
from fastdecoders.models.video_ops import apply_swaps
from fastdecoders.registry import DecoderSpec, register

SUPPORTED = ("AutoencoderKL", "AutoencoderKLTemporalDecoder", "AutoencoderKLWan", "AutoencoderKLLTXVideo",
             "AutoencoderDC")  # fmt: skip
VIDEO = ("AutoencoderKLWan", "AutoencoderKLLTXVideo")
#: modules only the encode path uses; removed so that every remaining parameter is on the decode path.
_ENCODE_ONLY = ("encoder", "quant_conv")


def _listify(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_listify(v) for v in value]
    return value


@dataclass(frozen=True)
class DiffusersVAEConfig:
    #: diffusers class name, one of ``SUPPORTED``.
    vae_class: str = "AutoencoderKL"
    #: constructor kwargs as sorted (key, value) pairs (or a dict / JSON object string); values are tuplified.
    vae_config: Any = ()
    #: operator swaps applied after building, as (module path inside the VAE, kind) with kinds from
    #: ``fastdecoders.prune.ops`` (``fastdecoders prune`` students); a saved student rebuilds the same modules.
    swaps: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.vae_class not in SUPPORTED:
            raise FastDecodersError(f"vae_class must be one of {', '.join(SUPPORTED)}, got {self.vae_class!r}")
        pairs = self.vae_config
        if isinstance(pairs, str):
            try:
                pairs = json.loads(pairs)
            except json.JSONDecodeError as e:
                raise FastDecodersError(f"vae_config is not a JSON object ({e})") from None
        items = pairs.items() if isinstance(pairs, dict) else pairs
        canonical = tuple(sorted((str(k), as_tuples(v)) for k, v in items))
        object.__setattr__(self, "vae_config", canonical)  # frozen: normalise once, here
        object.__setattr__(self, "swaps", tuple((str(p), str(k)) for p, k in self.swaps))

    @property
    def kwargs(self) -> dict[str, Any]:
        """Constructor kwargs as diffusers' ``config.json`` has them (lists: some classes concatenate them)."""
        return {k: _listify(v) for k, v in self.vae_config}

    @property
    def latent_channels(self) -> int:
        kw = self.kwargs
        default = {"AutoencoderKLWan": 16, "AutoencoderKLLTXVideo": 128, "AutoencoderDC": 32}.get(self.vae_class, 4)
        return int(kw.get("z_dim", kw.get("latent_channels", default)))


def vae_kwargs(vae: nn.Module) -> dict[str, Any]:
    """The constructor arguments of a diffusers VAE (its ``config`` without private keys)."""
    return {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}


class DiffusersVAEDecoder(Decoder):
    """Diffusion-space latents -> RGB in [-1, 1] via ``vae.decode`` of a diffusers VAE (see module docstring)."""

    arch = "diffusers-vae"
    config_class = DiffusersVAEConfig

    def __init__(self, config: DiffusersVAEConfig, vae: nn.Module | None = None):
        super().__init__(config)
        if vae is None:
            import diffusers  # lazy: importing diffusers costs seconds and most decoders never need it

            vae = getattr(diffusers, config.vae_class)(**config.kwargs)
        else:  # a decode-only view of the caller's VAE: the same submodules and weights, the caller's object untouched
            view = copy.copy(vae)
            for table in ("_modules", "_parameters", "_buffers"):
                setattr(view, table, dict(getattr(vae, table)))
            vae = view
        for name in _ENCODE_ONLY:
            if getattr(vae, name, None) is not None:
                setattr(vae, name, None)
        self.vae = vae
        # NCTHW video VAEs: an instance attribute shadows the class default of 4
        self.latent_ndim = 5 if config.vae_class in VIDEO else 4
        if config.swaps:
            apply_swaps(self.vae, config.swaps)

    @classmethod
    def from_diffusers(cls, folder_or_vae: str | os.PathLike | nn.Module, latents: str | None) -> DiffusersVAEDecoder:
        """Wrap a diffusers VAE object, or load one from a local folder (a ``vae/`` folder or a pipeline holding one).

        ``latents`` names the latent space (``fastdecoders.latents``), e.g. ``"sdxl"`` (None: set it before use).
        """
        if latents is not None:
            get_latent_space(latents)
        vae = folder_or_vae
        if not isinstance(vae, nn.Module):
            folder = Path(vae)
            if (folder / "vae" / "config.json").is_file():
                folder = folder / "vae"
            if not (folder / "config.json").is_file():
                raise FastDecodersError(f"{folder} is not a diffusers VAE folder (no config.json)")
            class_name = json.loads((folder / "config.json").read_text()).get("_class_name")
            if class_name not in SUPPORTED:
                raise FastDecodersError(f"{folder}: a {class_name}, expected one of {', '.join(SUPPORTED)}")
            vae = vae_from_folder(class_name, folder)
        name = type(vae).__name__
        if name not in SUPPORTED:
            raise FastDecodersError(f"expected a diffusers {' / '.join(SUPPORTED)}, got {name}")
        decoder = cls(DiffusersVAEConfig(name, vae_kwargs(vae)), vae=vae)
        decoder.latent_space_name = latents
        decoder.registry_name = None
        return decoder.eval()

    @property
    def decodes_clips(self) -> bool:
        """Video VAEs and SVD's decode a clip's frames together; image VAEs (whose ``forward`` ignores
        ``num_frames``) decode frame by frame (``fastdecoders.models.protocol``)."""
        return self.config.vae_class in VIDEO or self.config.vae_class == "AutoencoderKLTemporalDecoder"

    def raw_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion-space latents -> what ``vae.decode`` takes."""
        name = getattr(self, "latent_space_name", None)
        if name is None:
            raise FastDecodersError("this diffusers-vae decoder does not know its latent space; set latent_space_name")
        space = get_latent_space(name)
        buffers = dict(self.vae.named_buffers(recurse=False))
        mean, std = buffers.get("latents_mean"), buffers.get("latents_std")
        if mean is not None and std is not None:  # LTX: the statistics live in the checkpoint
            scale = float(self.config.kwargs.get("scaling_factor", 1.0))
            return space.to_raw(latents, mean=mean.tolist(), std=(std / scale).tolist())
        return space.to_raw(latents)

    def forward(self, latents: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Image: (B, C, h, w) -> (B, 3, f·h, f·w). Wan/LTX: (B, C, t, h, w) -> (B, 3, T, f·h, f·w).
        SVD: (B·T, C, h, w) + ``num_frames`` (default: one clip of all frames) -> (B·T, 3, f·h, f·w)."""
        if latents.ndim != self.latent_ndim:
            raise FastDecodersError(
                f"{self.config.vae_class} takes {self.latent_ndim}-d latents, got shape {tuple(latents.shape)}"
            )
        raw = self.raw_latents(latents)
        if self.config.vae_class == "AutoencoderKLTemporalDecoder":
            return self.vae.decode(raw, num_frames=num_frames or latents.shape[0]).sample
        return self.vae.decode(raw).sample


# Pipeline class-name prefixes that tell apart families sharing one VAE class (AutoencoderKL: sd1, sdxl, sd3, flux1).
# Longest prefix first: "StableDiffusionXL…" must not read as "StableDiffusion…".
_PIPELINE_HINTS: tuple[tuple[str, str], ...] = (
    ("StableDiffusionXL", "sdxl"),
    ("StableDiffusion3", "sd3"),
    ("StableVideoDiffusion", "svd"),
    ("StableDiffusion", "sd1"),
    ("Flux2", "flux2"),
    ("Flux", "flux1"),
)

# -- which latent space a diffusers VAE makes ------------------------------------------------------------------------


def vae_channels(vae: nn.Module) -> int | None:
    config = vae.config
    return config.get("latent_channels", config.get("z_dim"))


def vae_spatial_factor(vae: nn.Module) -> int | None:
    """Pixels per latent as the pipelines compute it (``2 ** (len(block_out_channels) - 1)`` for AutoencoderKL)."""
    config = vae.config
    if config.get("scale_factor_spatial"):  # Wan
        return int(config["scale_factor_spatial"])
    ratio = getattr(vae, "spatial_compression_ratio", None)  # LTX (an attribute, not always in the config)
    if isinstance(ratio, int):
        return ratio
    if config.get("block_out_channels"):
        return 2 ** (len(config["block_out_channels"]) - 1)
    return None


def vae_latent_spaces(vae: nn.Module, pipeline_name: str | None = None) -> list[LatentSpace]:
    """The latent spaces ``vae`` can be making latents in: one when it is identifiable, several when the
    VAE class is shared and nothing tells them apart, and an empty list for a VAE class no family uses.

    Args:
        vae: a diffusers VAE (its class name, latent channels and spatial factor are compared with each family's).
        pipeline_name: the pipeline's class name, which names the family when the VAE class alone cannot.
    """
    channels, factor = vae_channels(vae), vae_spatial_factor(vae)
    candidates = [
        space
        for space in LATENT_SPACES.values()
        if space.vae_class == type(vae).__name__
        and space.channels == channels
        and (factor is None or space.spatial_factor == factor)
    ]
    if len(candidates) <= 1:
        return candidates
    if pipeline_name:
        for prefix, name in _PIPELINE_HINTS:
            if pipeline_name.startswith(prefix):
                hinted = [s for s in candidates if s.name == name]
                if hinted:
                    return hinted
                break
    # no usable hint: the checkpoint's own scale/shift, when it equals one family's published values
    scaling, shift = vae.config.get("scaling_factor"), vae.config.get("shift_factor") or 0.0
    numeric = [
        s
        for s in candidates
        if scaling is not None and abs(s.scaling_factor - scaling) < 1e-4 and abs(s.shift_factor - shift) < 1e-4
    ]
    return numeric or candidates


# -- real weights -----------------------------------------------------------------------------------------------------


def vae_folder(path: str | os.PathLike) -> Path | None:
    """The diffusers VAE folder at ``path`` (itself, or its ``vae/`` for a pipeline folder) if it holds a supported
    class, else None."""
    folder = Path(path)
    if (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        class_name = json.loads(config.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return folder if class_name in SUPPORTED else None


#: attention parameter names of older diffusers checkpoints -> today's (what from_pretrained renames silently)
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def vae_from_folder(class_name: str, folder: Path) -> nn.Module:
    """The diffusers ``class_name`` built from ``folder/config.json`` with the folder's weights loaded **strictly**:
    a missing, unexpected or mis-shaped key is one ``FastDecodersError`` naming it (``from_pretrained`` ignores extra
    keys and initialises missing ones at random). Sharded folders (``*.safetensors.index.json``) are read too."""
    import diffusers  # lazy: importing diffusers costs seconds and most decoders never need it

    cls = getattr(diffusers, class_name)
    index = folder / f"{WEIGHT_FILES[0]}.index.json"
    file = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if file is not None:
        state = read_state_dict(file)[0]
    elif index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        state = {k: v for shard in shards for k, v in read_state_dict(folder / shard)[0].items()}
        file = index
    else:
        raise FastDecodersError(f"{folder}: expected {' or '.join(WEIGHT_FILES)} beside config.json, found neither")
    try:
        vae = cls.from_config(cls.load_config(folder))
    except (TypeError, ValueError, OSError) as e:
        raise FastDecodersError(f"{folder}/config.json does not describe a {class_name} ({e})") from None
    load_strict(vae, _current_names(state, vae.state_dict()), str(file))
    return vae.eval()


def open_vae(source: str | os.PathLike, vae_class: str, subfolder: str | None = None) -> nn.Module:
    """A whole diffusers VAE (encoder and decoder) of class ``vae_class``, in eval mode: a local folder (a VAE folder,
    a pipeline folder holding ``vae/``, or ``source/subfolder``) is loaded strictly (``vae_from_folder``); anything
    else is a hub id, fetched by diffusers' ``from_pretrained``. The one loader of a diffusers VAE the teacher (train),
    the encoder (eval) and ``load_decoder`` share. Local errors are ``FastDecodersError``; the hub's are diffusers'."""
    import diffusers  # lazy: importing diffusers costs seconds and most decoders never need it

    folder = Path(source).expanduser() / (subfolder or "")
    if folder.is_dir():
        found = vae_folder(folder) or folder
        return vae_from_folder(vae_class, found)
    cls = getattr(diffusers, vae_class)
    return cls.from_pretrained(str(source), **({"subfolder": subfolder} if subfolder else {})).eval()


def _current_names(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Older attention keys (``query``/``key``/``value``/``proj_attn``, 1x1-conv shaped) under today's names, when
    the model expects those; every other key as it is (``load_strict`` then judges them)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if key not in expected and len(parts) > 2 and parts[-2] in _OLD_ATTENTION:
            renamed = ".".join(parts[:-2] + [_OLD_ATTENTION[parts[-2]], parts[-1]])
            if renamed in expected:
                key = renamed
                if value.ndim == 4 and expected[key].ndim == 2:
                    value = value[:, :, 0, 0]
        out[key] = value
    return out


def load_diffusers_vae(folder: str | os.PathLike, latents: str | None = None) -> DiffusersVAEDecoder:
    """A teacher with real weights from a local diffusers folder (a VAE folder or a pipeline holding ``vae/``).

    ``latents`` names the latent space; by default it is recognised from the VAE (class, channels, factor, scaling)
    and left unset (``latent_space_name`` None) when several families fit.
    """
    found = vae_folder(folder)
    if found is None:
        raise FastDecodersError(f"expected a diffusers {' / '.join(SUPPORTED)} folder, got {folder}")
    class_name = json.loads((found / "config.json").read_text())["_class_name"]
    vae = vae_from_folder(class_name, found)
    if latents is None:
        spaces = vae_latent_spaces(vae)
        # ambiguous: left unset, the caller must say (load_decoder asks for latents=)
        latents = spaces[0].name if len(spaces) == 1 else None
    return DiffusersVAEDecoder.from_diffusers(vae, latents)


# -- registered teachers --------------------------------------------------------------------------------------------

_KL4 = {"down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2, "block_out_channels": (128, 256, 512, 512)}  # fmt: skip
_NO_QUANT = {"use_quant_conv": False, "use_post_quant_conv": False}
#: published configs: the fields that differ from the diffusers class defaults (as in tests/test_latents.py).
PUBLISHED: dict[str, tuple[str, str, dict[str, Any]]] = {  # name: (latent space, class, kwargs)
    "sd-vae": ("sd1", "AutoencoderKL", {**_KL4, "latent_channels": 4, "scaling_factor": 0.18215}),
    "sdxl-vae": ("sdxl", "AutoencoderKL", {**_KL4, "latent_channels": 4, "scaling_factor": 0.13025}),
    "sd3-vae": ("sd3", "AutoencoderKL", {**_KL4, **_NO_QUANT, "latent_channels": 16, "scaling_factor": 1.5305,
                                         "shift_factor": 0.0609}),
    "flux1-vae": ("flux1", "AutoencoderKL", {**_KL4, **_NO_QUANT, "latent_channels": 16, "scaling_factor": 0.3611,
                                             "shift_factor": 0.1159}),
    "svd-vae": ("svd", "AutoencoderKLTemporalDecoder", {"down_block_types": ("DownEncoderBlock2D",) * 4,
                                                        "layers_per_block": 2, "latent_channels": 4,
                                                        "block_out_channels": (128, 256, 512, 512)}),
    "wan2.1-vae": ("wan2.1", "AutoencoderKLWan", {}),
    "ltx-vae": ("ltx-video", "AutoencoderKLLTXVideo", {}),
    "sana-vae": ("sana", "AutoencoderDC", {}),
}  # fmt: skip
#: tiny overrides: narrow widths, one block per stage, every stage kept (so the factors stay the published ones).
TINY: dict[str, dict[str, Any]] = {
    "AutoencoderKL": {"block_out_channels": (8, 8, 8, 8), "norm_num_groups": 4, "layers_per_block": 1},
    # GroupNorm groups are fixed at 32; 2 layers, because with 1 the mid-block attention is never run (no gradient)
    "AutoencoderKLTemporalDecoder": {"block_out_channels": (32,) * 4, "layers_per_block": 2},
    "AutoencoderKLWan": {"base_dim": 8, "num_res_blocks": 1},
    "AutoencoderKLLTXVideo": {"block_out_channels": (8, 8, 8, 8), "decoder_block_out_channels": (8, 8, 8, 8),
                              "layers_per_block": (1, 1, 1, 1, 1), "decoder_layers_per_block": (1, 1, 1, 1, 1)},
    "AutoencoderDC": {"encoder_block_out_channels": (32,) * 6, "decoder_block_out_channels": (32,) * 6,
                      "encoder_layers_per_block": (1,) * 6, "decoder_layers_per_block": (1,) * 6,
                      "attention_head_dim": 8},
}  # fmt: skip


def teacher_for(latent_space: str) -> str | None:
    """The registered teacher (original VAE) of a latent space, or None."""
    return next((name for name, (space, _, _) in PUBLISHED.items() if space == latent_space), None)


def _register_variants() -> None:
    for name, (space, vae_class, kwargs) in PUBLISHED.items():
        latents = get_latent_space(space)
        register(DecoderSpec(
            name, "diffusers-vae", DiffusersVAEConfig(vae_class, kwargs), space,
            tiny=DiffusersVAEConfig(vae_class, {**kwargs, **TINY[vae_class]}),
            description=f"the original {latents.description} VAE decoder ({vae_class}); the teacher to beat",
            weights=None, hub_id=latents.vae_hub_id,
        ))  # fmt: skip


_register_variants()
