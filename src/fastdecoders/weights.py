"""Which weights a name means, and decoders of every kind loaded from them (the file format itself, reading and
strict loading, is ``fastdecoders.models.fileformat``).

``load_decoder(x)`` accepts, in this order: a registry name (weights found on the search path or the hub), a local
file or folder (our safetensors, an upstream TAESD ``.safetensors``/``.pth``, a diffusers ``AutoencoderTiny`` folder),
or a hub id ``org/repo``. Pickled files are only read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import atomic_dir
from fastdecoders.latents import get_latent_space
from fastdecoders.models import (
    ARCHITECTURES,
    Decoder,
    TAEConfig,
    TAEDecoder,
    TAEEncoder,
    TAEEncoderConfig,
    build_decoder,
)
from fastdecoders.models.diffusers_vae import DiffusersVAEDecoder, load_diffusers_vae, vae_folder
from fastdecoders.models.fileformat import (
    METADATA_KEY,
    check_finite_state,
    decoder_from_header,
    load_strict,
    read_header,
    read_state_dict,
)
from fastdecoders.models.taehv import TAEHVDecoder, is_taehv_state_dict
from fastdecoders.models.taehv import config_from_state_dict as taehv_config_from_state_dict
from fastdecoders.registry import DecoderSpec, get_spec, is_registered, list_decoders, unknown_name_message
from fastdecoders.switching.file import load_switch

WEIGHTS_ENV = "FASTDECODERS_WEIGHTS"
#: config.json key of a converted AutoencoderTiny folder naming its latent space (diffusers ignores "_" keys)
TINY_LATENTS_KEY = "_fastdecoders_latents"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")

# The upstream TAE encoders (weights-file stem -> config); used to make latents of real photos.
TAE_ENCODERS: dict[str, TAEEncoderConfig] = {
    "taesd_encoder": TAEEncoderConfig(latent_channels=4),
    "taesdxl_encoder": TAEEncoderConfig(latent_channels=4),
    "taesd3_encoder": TAEEncoderConfig(latent_channels=16),
    "taef1_encoder": TAEEncoderConfig(latent_channels=16),
    "taef2_encoder": TAEEncoderConfig(latent_channels=32, pool=True),
}


# -- search path ------------------------------------------------------------------------------------------------------


def search_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for upstream-named weights files: ``weights_dir``, then ``$FASTDECODERS_WEIGHTS`` (a
    ``os.pathsep``-separated list), then ``~/.cache/fastdecoders``."""
    dirs: list[Path] = []
    if weights_dir:
        dirs.append(Path(weights_dir))
    dirs += [Path(p) for p in os.environ.get(WEIGHTS_ENV, "").split(os.pathsep) if p]
    dirs.append(Path.home() / ".cache" / "fastdecoders")
    return dirs


def find_weights(stem: str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    for folder in search_dirs(weights_dir):
        for suffix in WEIGHT_SUFFIXES:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


#: where files made in this repository live (``DecoderSpec.file``): ``weights/`` next to ``src/`` in a checkout or an
#: editable install. A wheel does not carry them: copy the repository's ``weights/<folder>`` onto the weights path.
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "weights"


def shipped_candidates(file: str, weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where a shipped file (``DecoderSpec.file``, a relative path) is looked for, in order: the repository's
    ``weights/``, then the same relative path under each folder of the weights search path."""
    return [SHIPPED_DIR / file] + [folder / file for folder in search_dirs(weights_dir)]


def find_shipped(file: str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    return next((p for p in shipped_candidates(file, weights_dir) if p.is_file()), None)


def _looked_in(stem: str, weights_dir) -> str:
    return ", ".join(str(d / f"{stem}{{{','.join(WEIGHT_SUFFIXES)}}}") for d in search_dirs(weights_dir))


# -- TAESD-format files ------------------------------------------------------------------------------------------------


def tae_config_from_state_dict(state: dict[str, torch.Tensor]) -> TAEConfig:
    """Infer a TAE decoder config from an upstream-layout state dict (its shapes, never its file name)."""
    try:
        first = state["1.weight"]
        latent_channels, width = first.shape[1], first.shape[0]
        indices = sorted({int(k.split(".")[0]) for k in state})
    except (KeyError, ValueError, IndexError):
        raise FastDecodersError("not a TAESD-layout decoder state dict (no integer-indexed '1.weight')") from None
    # walk the sequence: blocks have '.conv.0.weight'; a stage boundary is a bare conv with no bias after layer 1
    blocks: list[int] = [0]
    widths: list[int] = [width]
    for i in indices[1:]:
        if f"{i}.conv.0.weight" in state:
            blocks[-1] += 1
        elif f"{i}.weight" in state and f"{i}.bias" not in state:
            blocks.append(0)
            widths.append(state[f"{i}.weight"].shape[0])
    pool = any(".pool." in k for k in state)
    return TAEConfig(latent_channels=latent_channels, widths=tuple(widths), blocks=tuple(blocks), pool=pool)


def _is_upstream_tae(state: dict[str, torch.Tensor]) -> bool:
    return "1.weight" in state and all(k.split(".")[0].isdigit() for k in state)


# -- diffusers AutoencoderTiny folders ---------------------------------------------------------------------------------


def _diffusers_tiny_to_tae(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``decoder.layers.{i}.*`` (diffusers) -> ``{i+1}.*`` (upstream): diffusers applies the clamp in forward."""
    out = {}
    for key, value in state.items():
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            out[f"{int(index) + 1}.{rest}"] = value
    return out


def _tae_to_diffusers_tiny(state: dict[str, torch.Tensor], prefix: str, offset: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}{int(k.split('.', 1)[0]) - offset}.{k.split('.', 1)[1]}": v for k, v in state.items()}


def _load_diffusers_tiny_folder(folder: Path) -> TAEDecoder:
    config = json.loads((folder / "config.json").read_text())
    if config.get("_class_name") != "AutoencoderTiny":
        raise FastDecodersError(f"{folder}/config.json is a {config.get('_class_name')}, expected AutoencoderTiny")
    files = [folder / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]
    file = next((f for f in files if f.is_file()), None)
    if file is None:
        raise FastDecodersError(f"{folder} has config.json but no diffusion_pytorch_model.safetensors")
    state, _ = read_state_dict(file)
    if config.get("upsampling_scaling_factor", 2) != 2 or config.get("upsample_fn", "nearest") != "nearest":
        raise FastDecodersError(f"{folder}: only x2 nearest upsampling AutoencoderTiny decoders are supported")
    if config.get("act_fn", "relu") != "relu":
        raise FastDecodersError(f"{folder}: only ReLU AutoencoderTiny decoders are supported")
    tae_config = TAEConfig(
        latent_channels=config.get("latent_channels", 4),
        widths=tuple(config.get("decoder_block_out_channels", (64, 64, 64, 64))),
        blocks=tuple(config.get("num_decoder_blocks", (3, 3, 3, 1))),
    )
    decoder = TAEDecoder(tae_config)
    load_strict(decoder, _diffusers_tiny_to_tae(state, "decoder.layers."), str(file))
    decoder.latent_space_name = config.get(TINY_LATENTS_KEY)  # written by save_diffusers_tiny; None elsewhere
    return decoder


def save_diffusers_tiny(
    decoder: TAEDecoder, out_dir: str | os.PathLike, encoder: TAEEncoder | None = None, overwrite: bool = False
) -> Path:
    """Write a diffusers ``AutoencoderTiny`` folder holding ``decoder`` (and ``encoder`` if given).

    ``diffusers.AutoencoderTiny.from_pretrained(out_dir)`` then gives the same pixels. Without an encoder the folder's
    encoder is randomly initialised (diffusers always has one); pass the matching TAE encoder for a usable one.
    The folder is built beside ``out_dir`` and renamed into place; an existing non-empty ``out_dir`` is an error
    unless ``overwrite`` (see ``atomic_dir``).
    """
    from diffusers import AutoencoderTiny

    cfg = decoder.config
    if not isinstance(decoder, TAEDecoder):
        raise FastDecodersError(f"only TAE decoders convert to AutoencoderTiny, got {type(decoder).__name__}")
    if cfg.pool:
        raise FastDecodersError("this TAE decoder has TAEF2's pool branch, which diffusers' AutoencoderTiny lacks")
    if len(set(cfg.widths)) != 1:
        raise FastDecodersError(f"AutoencoderTiny needs one width for all stages, got {cfg.widths}")
    enc_cfg = encoder.config if encoder is not None else TAEEncoderConfig(latent_channels=cfg.latent_channels)
    vae = AutoencoderTiny(
        latent_channels=cfg.latent_channels,
        decoder_block_out_channels=cfg.widths,
        num_decoder_blocks=cfg.blocks,
        encoder_block_out_channels=enc_cfg.widths,
        num_encoder_blocks=enc_cfg.blocks,
    )
    check_finite_state(decoder.state_dict(), f"refusing to save {out_dir}")
    state = _tae_to_diffusers_tiny({k: v.float() for k, v in decoder.state_dict().items()}, "decoder.layers.", 1)
    if encoder is not None:
        encoder_state = {k: v.float() for k, v in encoder.state_dict().items()}
        state.update(_tae_to_diffusers_tiny(encoder_state, "encoder.layers.", 0))
    result = vae.load_state_dict(state, strict=False)
    if result.unexpected_keys or (encoder is not None and result.missing_keys):
        raise FastDecodersError(f"conversion to AutoencoderTiny left keys unmatched: {result}")
    out = Path(out_dir)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        vae.save_pretrained(tmp)
        _tidy_tiny_config(Path(tmp) / "config.json", getattr(decoder, "latent_space_name", None))
    return out


def _tidy_tiny_config(path: Path, latents: str | None) -> None:
    """Record the latent space (a private ``_fastdecoders_latents`` key, which diffusers skips) so the folder reloads
    without naming it, and drop ``block_out_channels``: AutoencoderTiny registers it itself for pipelines
    (``vae_scale_factor``) but warns that the saved copy is ignored on reload."""
    config = json.loads(path.read_text())
    config.pop("block_out_channels", None)
    if latents is not None:
        config[TINY_LATENTS_KEY] = latents
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _load_file(path: Path, weights_dir: str | os.PathLike | None = None) -> Decoder:
    state, metadata = read_state_dict(path)
    header = read_header(metadata)
    if header is not None:
        if header.get("arch") == "switch":  # a dynamic switch: a gate plus the names of its two decoders
            return load_switch(path, header, state, weights_dir, load_decoder)
        decoder = decoder_from_header(header, ARCHITECTURES, str(path))
    elif _is_upstream_tae(state):
        decoder = TAEDecoder(tae_config_from_state_dict(state))
        decoder.latent_space_name = _guess_space_from_channels(decoder.config)
    elif is_taehv_state_dict(state):
        decoder = _taehv_from_file(path, state)
    else:
        raise FastDecodersError(
            f"{path} is neither a fastdecoders file (no '{METADATA_KEY}' metadata) nor a TAESD/TAEHV-layout decoder"
        )
    load_strict(decoder, state, str(path))
    return decoder


def _taehv_from_file(path: Path, state: dict[str, torch.Tensor]) -> Decoder:
    """An upstream TAEHV-family file: config from its shapes; latent space from its upstream file name if it has one
    (``taew2_1.pth``), else from its latent channels when only one family has that many."""
    decoder = TAEHVDecoder(taehv_config_from_state_dict(state, str(path)))

    named = [get_spec(n) for n in list_decoders() if get_spec(n).arch == "taehv" and get_spec(n).weights == path.stem]
    if named:
        decoder.latent_space_name, decoder.registry_name = named[0].latents, named[0].name
    else:
        by_channels = {48: "wan2.2", 32: "hunyuan-video-1.5", 24: "minimax-h3"}  # 16 and 128: several families
        decoder.latent_space_name = by_channels.get(decoder.config.latent_channels)
        decoder.registry_name = None
    return decoder


def _guess_space_from_channels(config: TAEConfig) -> str | None:
    # only unambiguous cases; 4- and 16-channel files could be any of two families, so callers must say which
    return "flux2" if config.latent_channels == 32 and config.pool else None


def _load_path(path: Path, weights_dir: str | os.PathLike | None = None) -> Decoder:
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return _load_file(path / "model.safetensors", weights_dir)
        if vae_folder(path) is not None:  # an original diffusers VAE (a teacher) with its real weights
            return load_diffusers_vae(path)
        if (path / "config.json").is_file():
            return _load_diffusers_tiny_folder(path)
        raise FastDecodersError(f"{path} holds neither model.safetensors nor a diffusers config.json")
    return _load_file(path, weights_dir)


def _load_hub(repo_id: str, source_name: str | None = None) -> Decoder:
    try:
        from huggingface_hub import snapshot_download  # lazy: only users who are online need the hub client

        folder = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"])
    except Exception as e:  # offline, unknown repo, gated repo: all end the same way for the user
        raise FastDecodersError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}); "
            f"download it yourself and pass the local path{' or put it on the weights path' if source_name else ''}"
        ) from None
    return _load_path(Path(folder))


def load_decoder(
    name_or_path: str | os.PathLike,
    *,
    latents: str | None = None,
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    pretrained: bool = True,
) -> Decoder:
    """A decoder in eval mode, from a registry name, a local path or a hub id.

    Args:
        latents: latent space of a file whose own metadata does not say (upstream TAESD files of 4 or 16 channels).
        weights_dir: extra folder searched first for upstream-named files (``taesdxl_decoder.safetensors``).
        pretrained: for a registry name, ``False`` gives random weights (e.g. to train).
    """
    target = str(name_or_path)
    if is_registered(target):
        spec = get_spec(target)
        if spec.composite and not pretrained:
            raise FastDecodersError(f"{target} is a file made in this repository (a {spec.arch}), not an architecture "
                                    f"to initialise at random; load it with its weights")  # fmt: skip
        decoder = _load_registered(spec, weights_dir) if pretrained else build_decoder(spec)
        decoder.latent_space_name, decoder.registry_name = spec.latents, spec.name
    elif Path(target).exists():
        decoder = _with_space(_load_path(Path(target), weights_dir), latents, target)
    elif target.count("/") == 1 and not target.startswith((".", "/")) and not Path(target).suffix:
        decoder = _with_space(_load_hub(target), latents, target)
    else:
        raise FastDecodersError(unknown_name_message(target))
    if getattr(decoder, "latent_space_name", None) is None:
        raise FastDecodersError(
            f"{target}: the file does not say which latent space it decodes; pass latents= (CLI: --latents), e.g. sdxl"
        )
    return decoder.to(device=device, dtype=dtype).eval()


def _with_space(decoder: Decoder, latents: str | None, target: str) -> Decoder:
    """``decoder`` told it reads ``latents`` (when given), which must have its number of channels."""
    if latents is not None:
        space = get_latent_space(latents)
        channels = getattr(decoder, "latent_channels", space.channels)
        if channels != space.channels:
            raise FastDecodersError(f"{target} decodes {channels}-channel latents; {space.name} latents have "
                                    f"{space.channels} channels: name the latent space it was made for")  # fmt: skip
        decoder.latent_space_name = latents
    return decoder


def _load_registered(spec: DecoderSpec, weights_dir) -> Decoder:
    if spec.arch == "diffusers-vae":  # the original VAEs: a diffusers folder, not a weights file
        return _load_published_vae(spec.name, weights_dir)
    if not spec.has_weights:
        raise FastDecodersError(
            f"{spec.name} has no released weights; train it (fastdecoders train) and pass the model.safetensors it "
            f"writes instead of the name"
        )
    if spec.file is not None:  # made in this repository: the file says its own config (and, for a switch, decoders)
        path = find_shipped(spec.file, weights_dir)
        if path is None:
            looked = ", ".join(str(p) for p in shipped_candidates(spec.file, weights_dir))
            raise FastDecodersError(f"weights for {spec.name} not found; looked for {looked}")
        decoder = _load_file(path, weights_dir)
        if decoder.arch != spec.arch or (spec.config is not None and decoder.config != spec.config):
            raise FastDecodersError(f"{path}: expected the {spec.arch} decoder registered as {spec.name}, got a "
                                    f"{decoder.arch} with config {decoder.config}")  # fmt: skip
        return decoder
    path = find_weights(spec.weights, weights_dir) if spec.weights else None
    if path is not None:
        state, _ = read_state_dict(path)
        cls = ARCHITECTURES[spec.arch]
        # optional parts (TAEHV's encoder) follow the file; every other shape must be the spec's
        config = cls.fit_config(spec.config, state, str(path)) if hasattr(cls, "fit_config") else None
        decoder = build_decoder(spec, config=config)
        load_strict(decoder, state, str(path))
        return decoder
    if spec.hub_id is None:
        raise FastDecodersError(
            f"weights for {spec.name} not found; looked for {_looked_in(spec.weights, weights_dir)} "
            f"(set --weights-dir or ${WEIGHTS_ENV})"
        )
    looked = f"looked for {_looked_in(spec.weights, weights_dir)}, then " if spec.weights else ""
    try:
        return _load_hub(spec.hub_id, spec.name)
    except FastDecodersError as e:
        raise FastDecodersError(f"weights for {spec.name} not found: {looked}{e}") from None


def _load_published_vae(name: str, weights_dir: str | os.PathLike | None = None) -> DiffusersVAEDecoder:
    """Registered original VAE ``name`` (``diffusers-vae``) with its real weights: a folder ``<weights dir>/<name>``
    (a diffusers VAE or pipeline folder) on the weights search path, else the ``vae/`` of its hub repo (one clear
    line when offline)."""
    spec = get_spec(name)
    for folder in search_dirs(weights_dir):
        if vae_folder(folder / name) is not None:
            decoder = load_diffusers_vae(folder / name, spec.latents)
            decoder.registry_name = name
            return decoder
    looked = ", ".join(str(d / name) for d in search_dirs(weights_dir))
    if spec.hub_id is None:
        raise FastDecodersError(f"weights for {name}: expected a diffusers VAE folder at one of {looked}, found none")
    try:
        from huggingface_hub import snapshot_download  # lazy: only users who are online need the hub client

        files = ["config.json", "diffusion_pytorch_model.safetensors"]
        folder = snapshot_download(spec.hub_id, allow_patterns=files + [f"vae/{f}" for f in files])
    except Exception as e:  # offline, unknown or gated repo: all end the same way for the user
        raise FastDecodersError(
            f"weights for {name}: expected a diffusers VAE folder at one of {looked} or the hub repo {spec.hub_id}, "
            f"got neither ({type(e).__name__}); download it and pass the local path"
        ) from None
    decoder = load_diffusers_vae(folder, spec.latents)
    decoder.registry_name = name
    return decoder


def load_encoder(
    stem: str, weights_dir: str | os.PathLike | None = None, device=None, dtype: torch.dtype | None = None
) -> TAEEncoder:
    """An upstream TAE encoder (``taesdxl_encoder`` …) from the weights search path: images in [-1, 1] ->
    diffusion-space latents."""
    if stem not in TAE_ENCODERS:
        raise FastDecodersError(f"unknown encoder {stem!r}; known: {', '.join(TAE_ENCODERS)}")
    path = find_weights(stem, weights_dir)
    if path is None:
        raise FastDecodersError(
            f"encoder weights {stem} not found; looked for {_looked_in(stem, weights_dir)} "
            f"(set --weights-dir or ${WEIGHTS_ENV})"
        )
    encoder = TAEEncoder(TAE_ENCODERS[stem])
    load_strict(encoder, read_state_dict(path)[0], str(path))
    return encoder.to(device=device, dtype=dtype).eval()


def weights_status(weights_dir: str | os.PathLike | None = None) -> dict[str, str | None]:
    """For ``fastdecoders list``: each registered decoder's local weights file, or None."""
    status = {}
    for name in list_decoders(composites=True):
        spec = get_spec(name)
        if spec.file is not None:
            found = find_shipped(spec.file, weights_dir)
        else:
            found = find_weights(spec.weights, weights_dir) if spec.weights else None
        status[name] = str(found) if found else None
    return status
