"""Dominant-operator swaps for video decoders: causal depthwise-separable 3-D convs in deep stages, per-frame 2-D
convs in high-resolution stages; chunked decoding stays exact, swaps survive save/load, the profiler names stages."""

from __future__ import annotations

import pytest
import torch

from fastdecoders import load_decoder, save_decoder
from fastdecoders.errors import FastDecodersError
from fastdecoders.models import TAEConfig, TAEDecoder
from fastdecoders.models.diffusers_vae import DiffusersVAEDecoder
from fastdecoders.models.video_ops import (
    CausalSepConv3d,
    FrameConv2d,
    SepConv3d,
    frame_from_dense,
    separable_from_dense,
)
from fastdecoders.prune import prune
from fastdecoders.prune.ops import decode_chunks, profile_stages, swap_operators

diffusers = pytest.importorskip("diffusers")

SPLITS = [(1, 1, 1, 1), (1, 3), (1, 2, 1), (1, 0, 3)]  # 4 latent frames; Wan's first chunk is one frame


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wan_case():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1).eval()
    teacher = DiffusersVAEDecoder.from_diffusers(vae, "wan2.1")
    z = torch.randn(1, 16, 4, 4, 4)
    pruned = prune(teacher, (1, 0.5, 0.25, 0.25), z, multiple=4).student
    student = swap_operators(pruned, sep3d_stages=(0, 1), frame2d_stages=(2, 3))
    with torch.no_grad():
        full = student(z)
    return teacher, student, z, full


def test_swaps_replace_the_dense_causal_convs(wan_case):
    teacher, student, z, full = wan_case
    modules = dict(student.vae.named_modules())
    assert isinstance(modules["decoder.mid_block.resnets.0.conv1"], CausalSepConv3d)
    assert isinstance(modules["decoder.up_blocks.1.resnets.0.conv2"], CausalSepConv3d)
    assert isinstance(modules["decoder.up_blocks.3.resnets.1.conv1"], FrameConv2d)
    assert type(modules["decoder.conv_in"]).__name__ == "WanCausalConv3d"  # only resnet convs are swapped
    assert {kind for _, kind in student.config.swaps} == {"sep3d", "frame2d"}
    with torch.no_grad():
        assert full.shape == teacher(z).shape and torch.isfinite(full).all()
    assert student.num_parameters() < sum(p.numel() for n, p in teacher.named_parameters() if "encoder" not in n)


@pytest.mark.parametrize("split", SPLITS, ids=lambda s: "+".join(map(str, s)))
def test_chunked_decoding_equals_whole_clip(wan_case, split):
    _, student, z, full = wan_case
    torch.testing.assert_close(decode_chunks(student, z, split), full, atol=1e-5, rtol=0)


def test_swapped_decoder_stays_causal(wan_case):
    _, student, z, full = wan_case
    later = z.clone()
    later[:, :, 2:] += 1.0  # change latent frames 2, 3 only
    with torch.no_grad():
        out = student(later)
    # latent frames 0, 1 make pixel frames 0..4 (1 + 4): they must not see the future
    torch.testing.assert_close(out[:, :, :5], full[:, :, :5], atol=1e-6, rtol=0)
    assert (out[:, :, 5:] - full[:, :, 5:]).abs().max() > 1e-3


def test_swaps_survive_save_and_load(wan_case, tmp_path):
    _, student, z, full = wan_case
    loaded = load_decoder(save_decoder(student, tmp_path / "wan.safetensors"))
    assert loaded.config.swaps == student.config.swaps
    with torch.no_grad():
        torch.testing.assert_close(loaded(z), full, atol=0, rtol=0)


def test_ltx_swaps_keep_shape_and_load(tmp_path):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLLTXVideo(
        latent_channels=128, block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
    )  # fmt: skip
    teacher = DiffusersVAEDecoder.from_diffusers(vae.eval(), "ltx-video")
    z = torch.randn(1, 128, 2, 2, 2)
    student = swap_operators(prune(teacher, 0.5, z, multiple=4).student, sep3d_stages=(0,), frame2d_stages=(3,))
    kinds = {type(m) for m in student.vae.modules()}
    assert SepConv3d in kinds and FrameConv2d in kinds
    with torch.no_grad():
        out = student(z)
    assert out.shape == teacher(z).shape
    loaded = load_decoder(save_decoder(student, tmp_path / "ltx.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(z), out, atol=0, rtol=0)


def test_separable_init_is_exact_for_rank_one_kernels():
    dense = torch.nn.Conv3d(4, 6, 3, padding=1)
    p, d = torch.randn(4, 6), torch.randn(4, 27)  # per input channel i: W[:, i] = p_i d_iᵀ
    with torch.no_grad():
        dense.weight.copy_(torch.einsum("io,it->oit", p, d).reshape(6, 4, 3, 3, 3))
    sep = SepConv3d(4, 6, 3, padding=1)
    separable_from_dense(dense.weight, dense.bias, sep)
    x = torch.randn(1, 4, 5, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(sep(x), dense(x), atol=1e-4, rtol=1e-4)


def test_frame_conv_init_is_exact_on_static_frames():
    dense = torch.nn.Conv3d(3, 5, 3, padding=(0, 1, 1))
    frame = FrameConv2d(3, 5)
    frame_from_dense(dense.weight, dense.bias, frame)
    x = torch.randn(1, 3, 1, 8, 8).expand(1, 3, 3, 8, 8)  # three identical frames: the temporal taps see one image
    with torch.no_grad():
        torch.testing.assert_close(frame(x[:, :, 1:2]), dense(x), atol=1e-5, rtol=1e-5)


def test_profile_names_the_dominant_operator_per_stage():
    decoder = TAEDecoder(TAEConfig(latent_channels=4, widths=(16, 16, 16, 16), blocks=(1, 1, 1, 1))).eval()
    table = profile_stages(decoder, torch.randn(1, 4, 8, 8))
    stages = [row["stage"] for row in table["stages"]]
    assert stages[:4] == ["stage0", "stage1", "stage2", "stage3"]
    assert sum(row["share"] for row in table["stages"]) == pytest.approx(1.0, abs=1e-6)
    for row in table["stages"][:4]:
        assert row["dominant"] == row["ops"][0]["op"] and row["dominant"].startswith("aten::")
        assert [o["ms"] for o in row["ops"]] == sorted((o["ms"] for o in row["ops"]), reverse=True)
    assert any(row["dominant"] == "aten::conv2d" for row in table["stages"])  # a TAE is convolutions


def test_bad_swaps_are_one_clear_error(wan_case):
    _, student, _, _ = wan_case
    with pytest.raises(FastDecodersError, match="both"):
        swap_operators(student, (1,), (1,))
    with pytest.raises(FastDecodersError, match="out of range"):
        swap_operators(student, (9,))
    with pytest.raises(FastDecodersError, match="1 first"):
        decode_chunks(student, torch.randn(1, 16, 4, 4, 4), (2, 2))
