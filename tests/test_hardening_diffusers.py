"""Issue 14: diffusers VAE folders load strictly, like TAE files: an extra, missing or mis-shaped key is exit 2 with
one line naming the key (from_pretrained would decode with exit 0, or end in a long traceback)."""

from __future__ import annotations

import shutil

import pytest
import torch
from cli_helpers import one_error_line, run_cli
from safetensors.torch import load_file, save_file

from fastdecoders.models.diffusers_vae import TINY, DiffusersVAEDecoder
from fastdecoders.weights import load_decoder

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vae") / "tiny-kl"
    diffusers.AutoencoderKL(**TINY["AutoencoderKL"], latent_channels=4).save_pretrained(folder)
    return folder


def edited_copy(folder, target, edit) -> object:
    shutil.copytree(folder, target)
    state = load_file(target / WEIGHTS)
    edit(state)
    save_file(state, str(target / WEIGHTS))
    return target


def test_a_clean_folder_decodes_like_diffusers(vae_folder):
    z = torch.randn(1, 4, 8, 8)
    ours = load_decoder(vae_folder, latents="sdxl")
    reference = DiffusersVAEDecoder.from_diffusers(diffusers.AutoencoderKL.from_pretrained(vae_folder), "sdxl")
    with torch.no_grad():
        torch.testing.assert_close(ours(z), reference(z), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("extra", "does not fit AutoencoderKL: unexpected keys ['decoder.bogus.weight']"),
        ("missing", "does not fit AutoencoderKL: missing keys ['decoder.conv_in.weight']"),
        ("shape", "key 'decoder.conv_in.bias' has shape (3,), expected (8,)"),
    ],
)
def test_bad_keys_are_one_line_naming_the_key(capsys, tmp_path, vae_folder, kind, message):
    def edit(state):
        if kind == "extra":
            state["decoder.bogus.weight"] = torch.zeros(2)
        elif kind == "missing":
            del state["decoder.conv_in.weight"]
        else:
            state["decoder.conv_in.bias"] = torch.zeros(3)

    folder = edited_copy(vae_folder, tmp_path / kind, edit)
    save_file({"latents": torch.randn(1, 4, 8, 8)}, str(tmp_path / "z.safetensors"))
    code, _, err = run_cli(capsys, "decode", folder, tmp_path / "z.safetensors", "--latents-space", "sdxl", "-o",
                           tmp_path / "x.png")  # fmt: skip
    assert code == 2 and message in one_error_line(err) and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_older_attention_names_still_load(tmp_path, vae_folder):
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def to_old_names(state):
        for key in [k for k in state if ".attentions." in k]:
            for new, old in renames.items():
                if f".{new}." in key:
                    state[key.replace(f".{new}.", f".{old}.")] = state.pop(key)

    folder = edited_copy(vae_folder, tmp_path / "old", to_old_names)
    assert any(".query." in k for k in load_file(folder / WEIGHTS))
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(load_decoder(folder, latents="sdxl")(z), load_decoder(vae_folder, latents="sdxl")(z))


def test_a_folder_without_weights_is_one_line(capsys, tmp_path, vae_folder):
    folder = tmp_path / "no-weights"
    shutil.copytree(vae_folder, folder)
    (folder / WEIGHTS).unlink()
    save_file({"latents": torch.randn(1, 4, 8, 8)}, str(tmp_path / "z.safetensors"))
    code, _, err = run_cli(capsys, "decode", folder, tmp_path / "z.safetensors", "-o", tmp_path / "x.png")
    assert code == 2 and f"expected {WEIGHTS} or diffusion_pytorch_model.bin beside config.json" in one_error_line(err)
