"""Weights I/O: our format round-trips bit-exactly, upstream and diffusers files load, bad files fail clearly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fastdecoders import build_decoder, list_decoders, load_decoder, load_encoder, save_decoder
from fastdecoders.errors import FastDecodersError
from fastdecoders.models import TAEConfig, TAEDecoder
from fastdecoders.weights import (
    load_strict,
    read_state_dict,
    save_diffusers_tiny,
    search_dirs,
    tae_config_from_state_dict,
)

UPSTREAM_PARAMS = {  # from ../shared/weights/MANIFEST.md
    "taesd": 1_222_531, "taesdxl": 1_222_531, "taesd3": 1_229_443, "taef1": 1_229_443, "taef2": 1_338_499,
}  # fmt: skip
UPSTREAM = list(UPSTREAM_PARAMS)


@pytest.mark.parametrize("name", list_decoders())
def test_save_load_is_bit_exact(name, tmp_path):
    decoder = build_decoder(name, tiny=True)
    path = save_decoder(decoder, tmp_path / f"{name}.safetensors")
    loaded = load_decoder(path)
    assert type(loaded) is type(decoder) and loaded.config == decoder.config
    assert loaded.latent_space_name == decoder.latent_space_name
    original, reloaded = decoder.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[k], reloaded[k]) for k in original)


def test_folder_format_has_config_json(tmp_path):
    decoder = build_decoder("taesd", tiny=True)
    save_decoder(decoder, tmp_path / "model")
    assert (tmp_path / "model" / "config.json").is_file()
    assert load_decoder(tmp_path / "model").config == decoder.config


def test_strict_loading_names_the_key():
    decoder = TAEDecoder(TAEConfig(widths=(8,) * 4, blocks=(1,) * 4))
    state = decoder.state_dict()
    missing = {k: v for k, v in state.items() if k != "1.weight"}
    with pytest.raises(FastDecodersError, match="missing keys \\['1.weight'\\]"):
        load_strict(decoder, missing, "test")
    with pytest.raises(FastDecodersError, match="unexpected keys \\['extra'\\]"):
        load_strict(decoder, {**state, "extra": torch.zeros(1)}, "test")
    with pytest.raises(FastDecodersError, match="'1.weight' has shape \\(8, 5, 3, 3\\), expected \\(8, 4, 3, 3\\)"):
        load_strict(decoder, {**state, "1.weight": torch.zeros(8, 5, 3, 3)}, "test")


def test_corrupt_and_unsafe_files(tmp_path):
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(FastDecodersError, match="not a readable safetensors"):
        read_state_dict(corrupt)
    truncated = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(3)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(FastDecodersError, match="not a readable weights file"):
        read_state_dict(truncated)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"w": torch.zeros(3), "obj": _Pickled()}, unsafe)  # needs arbitrary code to unpickle
    with pytest.raises(FastDecodersError, match="not a readable weights file"):
        read_state_dict(unsafe)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"encoder.w": torch.zeros(2)}, str(foreign))
    with pytest.raises(FastDecodersError, match="neither a fastdecoders file"):
        load_decoder(foreign)


class _Pickled:
    pass


def test_unknown_names_and_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTDECODERS_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FastDecodersError, match="did you mean taesdxl"):
        load_decoder("taesdxll")
    with pytest.raises(FastDecodersError, match=f"looked for {tmp_path}/taef2_decoder"):
        load_decoder("taef2")
    with pytest.raises(FastDecodersError, match="has no released weights"):
        load_decoder("tae192-sdxl")
    with pytest.raises(FastDecodersError, match="could not fetch 'someone/somerepo'"):
        load_decoder("someone/somerepo", latents="sdxl")
    assert search_dirs("x")[0].name == "x" and search_dirs()[0] == tmp_path


def test_tae_config_is_inferred_from_shapes():
    for config in (TAEConfig(), TAEConfig(latent_channels=16, widths=(32, 24, 16, 8), blocks=(2, 1, 3, 1))):
        assert tae_config_from_state_dict(TAEDecoder(config).state_dict()) == config


def test_diffusers_tiny_folder_round_trip(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    decoder = build_decoder("taesdxl", tiny=True).eval()
    save_diffusers_tiny(decoder, tmp_path / "tiny")
    vae = diffusers.AutoencoderTiny.from_pretrained(tmp_path / "tiny").eval()
    loaded = load_decoder(tmp_path / "tiny", latents="sdxl")
    z = torch.randn(1, 4, 6, 5)
    with torch.no_grad():
        ours, theirs, again = decoder(z), vae.decode(z).sample, loaded(z)
    torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=0)
    torch.testing.assert_close(again, ours, atol=0, rtol=0)


def test_taef2_does_not_fit_autoencoder_tiny(tmp_path):
    with pytest.raises(FastDecodersError, match="pool branch"):
        save_diffusers_tiny(build_decoder("taef2", tiny=True), tmp_path / "x")


# -- real upstream weights (../shared/weights/taesd) -----------------------------------------------------------------


@pytest.mark.parametrize("name", UPSTREAM)
def test_upstream_files_load_by_name_and_path(name, taesd_weights_dir):
    by_name = load_decoder(name, weights_dir=taesd_weights_dir)
    suffix = ".pth" if name == "taef2" else ".safetensors"
    by_path = load_decoder(taesd_weights_dir / f"{name}_decoder{suffix}", latents=by_name.latent_space_name)
    assert by_path.config == by_name.config
    assert by_name.num_parameters() == UPSTREAM_PARAMS[name]
    z = torch.randn(1, by_name.latent_channels, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(by_name(z), by_path(z), atol=0, rtol=0)


def test_parity_with_diffusers_autoencoder_tiny_on_real_taesdxl(taesd_weights_dir, kodak_dir, tmp_path):
    """Our TAE with the real TAESDXL weights == diffusers.AutoencoderTiny with the same weights.

    Tolerance: fp32, max abs diff ≤ 1e-5 on [-1, 1] outputs (the same ops in the same order; only the clamp is
    written differently)."""
    diffusers = pytest.importorskip("diffusers")
    from fastdecoders.io import crop_to_multiple, read_image

    ours = load_decoder("taesdxl", weights_dir=taesd_weights_dir)
    encoder = load_encoder("taesdxl_encoder", taesd_weights_dir)
    save_diffusers_tiny(ours, tmp_path / "taesdxl", encoder=encoder)
    vae = diffusers.AutoencoderTiny.from_pretrained(tmp_path / "taesdxl").eval()
    image = crop_to_multiple(read_image(kodak_dir / "kodim23.png"), 8)[None, :, :256, :256] * 2 - 1
    with torch.no_grad():
        latents = encoder(image)
        theirs_latents = vae.encode(image).latents  # like ours, it takes [-1, 1]
        ours_out, theirs_out = ours.decode(latents).sample, vae.decode(latents).sample
    torch.testing.assert_close(theirs_latents, latents, atol=1e-5, rtol=0)
    assert (ours_out - theirs_out).abs().max() <= 1e-5
