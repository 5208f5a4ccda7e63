"""TAEHV layout: every published variant loads from upstream-format files (.pth and .safetensors) and decodes and
encodes like madebyollin/taehv's reference code (../shared/reference/taehv.py, imported here only), in parallel and
streaming, on clips of awkward lengths. Tolerance: fp32, max |difference| <= 1e-5 on [0, 1] RGB / raw latents."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from safetensors.torch import save_file

import fastdecoders
from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import get_latent_space, to_01
from fastdecoders.models import build_decoder
from fastdecoders.models.taehv import ALIASES, PUBLISHED, TAEHVDecoder, config_from_state_dict
from fastdecoders.registry import get_spec

ATOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")

# the settings the reference derives from each file name, passed explicitly to build a random-weight model
_X8 = dict(encoder_time_downscale=(True,) * 3, decoder_time_upscale=(True,) * 3)
REFERENCE_SETTINGS = {
    "taehv": {}, "taew2_1": {}, "taecvx": {}, "taeos1_3": {},
    "taehv1_5": dict(patch_size=2, latent_channels=32),
    "taehv1_5_super": dict(patch_size=2, latent_channels=32, arch_variant="super"),
    "taew2_2": dict(patch_size=2, latent_channels=48),
    "taew2_2_super": dict(patch_size=2, latent_channels=48, arch_variant="super"),
    "taeltx_2": dict(patch_size=4, latent_channels=128, **_X8),
    "taeltx2_3": dict(patch_size=4, latent_channels=128, **_X8),
    "taeh3": dict(patch_size=2, latent_channels=24),
}  # fmt: skip
# latent frame counts (decode) and pixel frame counts (encode) per family: first frame alone, odd, even, ragged
DECODE_FRAMES = {"cogvideox": (5, 6), "minimax-h3": (2, 7)}
ENCODE_FRAMES = {"minimax-h3": (5, 22)}


def _reference_module(shared_dir):
    path = shared_dir / "reference" / "taehv.py"
    if "taehv_reference" not in sys.modules:
        spec = importlib.util.spec_from_file_location("taehv_reference", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["taehv_reference"] = module
        spec.loader.exec_module(module)
    return sys.modules["taehv_reference"]


@pytest.fixture(scope="module", params=list(PUBLISHED))
def variant(request, shared_dir, tmp_path_factory):
    """(stem, reference model loaded from <stem>.pth, ours from .pth, ours from .safetensors): one random init."""
    stem = request.param
    ref_mod = _reference_module(shared_dir)
    torch.manual_seed(0)
    built = ref_mod.TAEHV(checkpoint_path=None, **REFERENCE_SETTINGS[stem])
    with torch.no_grad():  # centre the random output in (0, 1) so that the clamp does not hide differences
        built.decoder[-1].bias.fill_(0.5)
        built.decoder[-1].weight.mul_(0.2)
    state = built.state_dict()
    pth_dir, st_dir = tmp_path_factory.mktemp(f"{stem}_pth"), tmp_path_factory.mktemp(f"{stem}_st")
    torch.save(state, pth_dir / f"{stem}.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(st_dir / f"{stem}.safetensors"))
    reference = ref_mod.TAEHV(checkpoint_path=str(pth_dir / f"{stem}.pth")).eval()  # name-derived flags (cvx, h3)
    ours = fastdecoders.load_decoder(stem, weights_dir=pth_dir)
    ours_st = fastdecoders.load_decoder(stem, weights_dir=st_dir)
    return stem, reference, ours, ours_st


def _latents(space, t, seed=1):
    g = torch.Generator().manual_seed(seed)
    h = 1 if space.spatial_factor == 32 else 2
    return torch.randn(1, space.channels, t, h, h + 1, generator=g)


def test_registry_config_is_the_files_shapes(variant):
    stem, _, ours, ours_st = variant
    assert isinstance(ours, TAEHVDecoder) and ours.registry_name == stem
    assert ours.config == get_spec(stem).config == config_from_state_dict(ours.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ours_st.state_dict()[key]), key


def test_decode_parallel_and_streaming_equal_reference(variant):
    stem, reference, ours, ours_st = variant
    space = get_latent_space(ours.latent_space_name)
    inside = []
    for t in DECODE_FRAMES.get(space.name, (1, 5)):
        z = _latents(space, t)
        with torch.no_grad():
            want = reference.decode_video(z.transpose(1, 2), parallel=True, show_progress_bar=False).transpose(1, 2)
            sequential = reference.decode_video(z.transpose(1, 2), parallel=False, show_progress_bar=False)
            got = to_01(ours(z))
            got_st = to_01(ours_st(z))
        assert want.shape[2] == space.pixel_frames(t) == got.shape[2]
        assert (got - want).abs().max() <= ATOL and (got_st - want).abs().max() <= ATOL
        assert (sequential.transpose(1, 2) - want).abs().max() <= ATOL
        for split in ([1] * t, [t // 2, 0, t - t // 2]):  # frame by frame; uneven chunks with an empty one
            stream = ours.stream(latent_frames=t)
            chunks, start = [], 0
            for size in split:
                chunks.append(stream.push(z[:, :, start : start + size]))
                start += size
            assert stream.flush().shape[2] == 0
            assert (to_01(torch.cat(chunks, 2)) - want).abs().max() <= ATOL
        inside.append(((want > 0) & (want < 1)).float().mean())
    assert min(inside) > 0.05  # the comparison is not between two saturated clamps


def test_encode_parallel_and_sequential_equal_reference(variant):
    stem, reference, ours, _ = variant
    space = get_latent_space(ours.latent_space_name)
    f = space.spatial_factor
    for frames in ENCODE_FRAMES.get(space.name, (1, 6)):
        video01 = torch.rand(1, 3, frames, 2 * f, 3 * f, generator=torch.Generator().manual_seed(frames))
        with torch.no_grad():
            want = reference.encode_video(video01.transpose(1, 2), parallel=True, show_progress_bar=False)
            got = ours.encode(video01 * 2 - 1)
            sequential = ours.encode(video01 * 2 - 1, parallel=False)
        want = want.transpose(1, 2)
        assert got.shape == want.shape and got.shape[1] == space.channels
        assert (got - want).abs().max() <= ATOL and (sequential - want).abs().max() <= ATOL


def test_path_load_reads_the_family_from_the_upstream_file_name(variant, tmp_path):
    stem, _, ours, _ = variant
    path = tmp_path / f"{stem}.pth"
    torch.save(ours.state_dict(), path)
    loaded = fastdecoders.load_decoder(path)
    assert (loaded.registry_name, loaded.latent_space_name) == (stem, get_spec(stem).latents)
    assert loaded.config == ours.config


def test_aliases_share_a_published_file_or_are_students():
    for name, (space, stem, _) in ALIASES.items():
        spec = get_spec(name)
        assert spec.latents == space and spec.weights == stem
        assert spec.config.temporal_factor == spec.latent_space.temporal_factor


def test_wrong_variant_and_truncated_files_are_one_line_errors(tmp_path):
    wrong = build_decoder("taew2_1", tiny=False).state_dict()
    torch.save(wrong, tmp_path / "taew2_2.pth")
    with pytest.raises(FastDecodersError, match=r"16 latent channels, patch 1.*expected 48 latent channels, patch 2"):
        fastdecoders.load_decoder("taew2_2", weights_dir=tmp_path)
    torch.save(wrong, tmp_path / "full.pth")
    (tmp_path / "taecvx.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:50_000])
    with pytest.raises(FastDecodersError, match="taecvx.pth") as info:
        fastdecoders.load_decoder("taecvx", weights_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_frame_rules_are_one_line_errors():
    h3 = build_decoder("taeh3", tiny=True).eval()
    with pytest.raises(FastDecodersError, match=r"minimax-h3: 3 latent frames; expected t = 5·n − 3"):
        h3(torch.randn(1, 24, 3, 2, 2))
    cvx = build_decoder("taecvx", tiny=True).eval()
    with pytest.raises(FastDecodersError, match="streaming needs the clip's latent frame count"):
        cvx.stream()
    wan = build_decoder("taew2_1", tiny=True).eval()
    with pytest.raises(FastDecodersError, match=r"expected NCTHW latents \(B, 16, t, h, w\)"):
        wan(torch.randn(1, 4, 3, 2, 2))
    stream = wan.stream()
    stream.push(torch.randn(1, 16, 1, 2, 2))
    with pytest.raises(FastDecodersError, match="cannot continue a clip"):
        stream.push(torch.randn(1, 16, 1, 2, 3))


def test_student_without_encoder_has_decoder_keys_only():
    student = build_decoder("taehv-ltx-video", tiny=True)  # a student to train: no published file, no encoder
    assert all(k.startswith("decoder.") for k in student.state_dict())
    with pytest.raises(FastDecodersError, match="without an encoder"):
        student.encode(torch.zeros(1, 3, 1, 32, 32))


def test_real_wan_latents_decode_with_random_taew2_1(shared_dir):
    """Smoke test on the real Wan 2.1 latents of the TAEHV demo (NCTHW, 16 latent frames of 40x64)."""
    z = torch.load(shared_dir / "weights" / "test_data" / "taehv_test_latents_wan.pth", map_location="cpu")
    assert z.shape == (1, 16, 16, 40, 64)
    z = z.float()[..., :16, :24]  # all 16 frames, a 128x192-pixel crop (time is what is tested here)
    tiny = build_decoder("taew2_1", tiny=True).eval()
    with torch.no_grad():
        video = tiny(z)
        streamed = torch.cat(list(tiny.stream().frames(z)), 0).unsqueeze(0).permute(0, 2, 1, 3, 4)
    assert video.shape == (1, 3, 61, 128, 192) and torch.isfinite(video).all()
    assert (streamed - video).abs().max() <= ATOL
    full = build_decoder("taew2_1").eval()  # the published widths, on a crop
    crop = z[:, :, :3, :6, :6]
    with torch.no_grad():
        out = full(crop)
        pushed = torch.cat([full.stream().push(crop[:, :, :1]), full.stream().push(crop[:, :, :1])], 2)
    assert out.shape == (1, 3, 9, 48, 48) and torch.isfinite(out).all()
    assert pushed.shape[2] == 2  # two fresh streams: one frame each for a first latent frame


@pytest.mark.parametrize("name", ["taew2_1", "taew2_2", "taehv_super_like", "taehv-ltx-video"])
def test_output_frames_depend_only_on_current_and_past_latents_and_state_stays_constant(name):
    spec = get_spec("taehv1_5_super" if name == "taehv_super_like" else name)
    decoder = build_decoder(spec, tiny=True).eval()
    space, k = spec.latent_space, spec.latent_space.temporal_factor
    h = 1 if space.spatial_factor == 32 else 2
    z = torch.randn(1, space.channels, 5, h, h)
    with torch.no_grad():
        full = decoder(z)
        for changed in (1, 3):
            perturbed = z.clone()
            perturbed[:, :, changed] += 1.0
            out = decoder(perturbed)
            first = 1 + k * (changed - 1)  # the first pixel frame of latent frame `changed`
            assert (out[:, :, :first] - full[:, :, :first]).abs().max() <= 1e-6
            assert (out[:, :, first] - full[:, :, first]).abs().max() > 1e-4
    stream = decoder.stream()
    sizes = []
    for i in range(5):
        stream.push(z[:, :, i : i + 1])
        sizes.append(sum(s.numel() for s in stream.states if isinstance(s, torch.Tensor)))
    assert sizes[1] == sizes[-1] > 0  # one frame per memory block, whatever the clip length
    with pytest.raises(FastDecodersError, match="at least 1 latent frame"):
        decoder(z[:, :, :0])
