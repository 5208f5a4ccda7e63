"""Pruning diffusers VAE decoders (random weights, tiny configs): narrower same-class students that take the same
latents, exact at keep 1, saved and loaded as ``diffusers-vae``; identity shortcuts that become 1x1 projections."""

from __future__ import annotations

import pytest
import torch

from fastdecoders import load_decoder, save_decoder
from fastdecoders.errors import FastDecodersError
from fastdecoders.models.diffusers_vae import DiffusersVAEDecoder
from fastdecoders.prune import prune

diffusers = pytest.importorskip("diffusers")


pytestmark = pytest.mark.usefixtures("one_thread")


def kl_teacher() -> DiffusersVAEDecoder:
    vae = diffusers.AutoencoderKL(
        block_out_channels=(16, 32, 32), norm_num_groups=8, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    )  # fmt: skip
    return DiffusersVAEDecoder.from_diffusers(vae.eval(), "sdxl")


def wan_teacher() -> DiffusersVAEDecoder:
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1)
    return DiffusersVAEDecoder.from_diffusers(vae.eval(), "wan2.1")


def ltx_teacher() -> DiffusersVAEDecoder:
    vae = diffusers.AutoencoderKLLTXVideo(
        latent_channels=128, block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
    )  # fmt: skip
    return DiffusersVAEDecoder.from_diffusers(vae.eval(), "ltx-video")


CASES = {
    "kl": (kl_teacher, (2, 4, 4, 4)),
    "wan": (wan_teacher, (1, 16, 2, 4, 4)),
    "ltx": (ltx_teacher, (1, 128, 2, 2, 2)),
}


@pytest.mark.parametrize("family", list(CASES))
def test_keep_one_reproduces_the_teacher(family):
    make, shape = CASES[family]
    teacher, z = make(), torch.randn(shape)
    student = prune(teacher, 1.0, z).student
    with torch.no_grad():
        torch.testing.assert_close(student(z), teacher(z))


@pytest.mark.parametrize("family", list(CASES))
def test_pruned_student_takes_the_same_latents(family, tmp_path):
    make, shape = CASES[family]
    teacher, z = make(), torch.randn(shape)
    stages = len(teacher.vae.decoder.up_blocks)
    result = prune(teacher, (1, 0.5, 0.25, 0.25)[:stages], z, multiple=4)
    student = result.student
    assert type(student.vae) is type(teacher.vae)
    assert student.num_parameters() < sum(p.numel() for n, p in teacher.named_parameters() if "encoder" not in n)
    with torch.no_grad():
        out, ref = student(z), teacher(z)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    loaded = load_decoder(save_decoder(student, tmp_path / "student.safetensors"))
    assert loaded.arch == "diffusers-vae" and loaded.latent_space_name == teacher.latent_space_name
    with torch.no_grad():
        torch.testing.assert_close(loaded(z), out)


def test_identity_shortcut_becomes_a_projection():
    # stage 1 of the teacher passes its 32-channel stream on unchanged; the student narrows it from 32 to 16 there
    teacher, z = kl_teacher(), torch.randn(2, 4, 4, 4)
    result = prune(teacher, "1,0.5,0.5", z, multiple=8)
    key = "vae.decoder.up_blocks.1.resnets.0.conv_shortcut.weight"
    assert key in result.plan.projections
    assert teacher.vae.decoder.up_blocks[1].resnets[0].conv_shortcut is None
    assert result.student.state_dict()[key].shape == (16, 32, 1, 1)


def test_group_norm_groups_follow_the_widths():
    teacher, z = kl_teacher(), torch.randn(2, 4, 4, 4)
    result = prune(teacher, 0.25, z, multiple=1)  # widths 8, 8, 4: 8 groups no longer divide them
    assert result.student.config.kwargs["norm_num_groups"] == 4
    assert any("GroupNorm" in n for n in result.notes)


def test_unsupported_layouts_are_one_clear_error():
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, is_residual=True)
    with pytest.raises(FastDecodersError, match="Wan 2.2"):
        prune(DiffusersVAEDecoder.from_diffusers(vae, "wan2.1"), 0.5, torch.randn(1, 16, 1, 2, 2))
    with pytest.raises(FastDecodersError, match="TAE decoders and diffusers"):
        prune(torch.nn.Conv2d(4, 4, 1), 0.5, torch.randn(1, 4, 2, 2))


@pytest.mark.parametrize("name", ["sdxl-vae", "flux1-vae", "wan2.1-vae"])
def test_registry_teachers_prune_to_students_that_load(name, tmp_path):
    """The registered original VAEs (tiny configs; SDXL: 4 latent channels + quant convs, FLUX: 16 and none, Wan:
    video) are valid teachers: the student reads the same latents and reloads identically."""
    from fastdecoders.models import build_decoder
    from fastdecoders.prune.calib import random_latents
    from fastdecoders.registry import get_spec

    teacher = build_decoder(name, tiny=True).eval()
    side = 2 if get_spec(name).latent_space.spatial_factor == 32 else 4
    z = random_latents(teacher, 1, side, side, frames=2)
    student = prune(teacher, 0.5, z, multiple=4).student
    assert student.latent_space_name == teacher.latent_space_name
    with torch.no_grad():
        out = student(z)
        assert out.shape == teacher(z).shape
    loaded = load_decoder(save_decoder(student, tmp_path / f"{name}.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(z), out, atol=0, rtol=0)
