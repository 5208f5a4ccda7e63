"""Live previews: the linear fit, the shipped per-family previews on real photos, the preview callback on tiny
pipelines (final output unchanged bit for bit, N previews written), the sinks, ``preview fit`` and bad input."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import one_error_line, run_cli
from PIL import Image

import fastdecoders
from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import get_latent_space
from fastdecoders.previews import LinearPreview, fit_linear, load_linear_preview, shipped_families
from fastdecoders.previews.fit import encode_pairs, preview_psnr, resolve_codec
from fastdecoders.testing.tiny_pipelines import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

#: PSNR floors (dB, vs the real TAE decoder's output area-averaged to the latent grid) on Kodak 03 and 23 at 128x128,
#: ~1.5 dB under what the shipped previews measured there on 2026-12-03 (20.1, 19.2, 27.0, 27.6, 19.9 dB); the
#: 24-photo Kodak means at 256x256 from benchmarks/fit_previews.py are in docs/previews.md
PSNR_FLOOR_DB = {"sd1": 18.5, "sdxl": 17.5, "sd3": 25.5, "flux1": 26.0, "flux2": 18.5}
TAE = {"sd1": "taesd", "sdxl": "taesdxl", "sd3": "taesd3", "flux1": "taef1", "flux2": "taef2"}


# -- the linear map -------------------------------------------------------------------------------------------------


def test_fit_linear_recovers_a_known_matrix():
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(3, 16, generator=g), torch.randn(3, generator=g)
    latents = torch.randn(6, 16, 8, 8, generator=g)
    targets = torch.einsum("oc,bchw->bohw", weight, latents) + bias.view(1, 3, 1, 1)
    noisy = targets + 1e-3 * torch.randn(targets.shape, generator=g)
    w, b = fit_linear(latents, noisy)
    # 384 cells, 17 unknowns per colour, noise 1e-3: the estimate is within a few 1e-4
    assert torch.allclose(w, weight, atol=2e-3) and torch.allclose(b, bias, atol=2e-3)
    preview = LinearPreview(w, b, latents="flux1")
    assert torch.allclose(preview(latents), targets, atol=1e-2)


def test_linear_preview_roundtrips_through_json(tmp_path):
    preview = LinearPreview(torch.randn(3, 4), torch.randn(3), latents="sdxl", fit={"note": "test"})
    loaded = LinearPreview.load(preview.save(tmp_path / "p.json"))
    z = torch.randn(2, 4, 5, 7)
    assert loaded.latent_space_name == "sdxl" and loaded.fit == {"note": "test"}
    assert torch.allclose(loaded(z), preview(z), atol=1e-4)  # the file keeps 6 decimals


def test_linear_preview_takes_video_layouts():
    preview = LinearPreview(torch.randn(3, 16), torch.zeros(3), latents="wan2.1")
    assert preview(torch.randn(1, 16, 3, 4, 5)).shape == (1, 3, 3, 4, 5)


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3", "flux1", "flux2"])
def test_shipped_preview_matches_the_real_decoder(family, taesd_weights_dir, kodak_dir):
    preview = load_linear_preview(family)
    assert preview.latent_channels == get_latent_space(family).channels
    assert preview.fit["psnr_heldout_db"] > 0 and preview.fit["date"]
    codec = resolve_codec(TAE[family], weights_dir=taesd_weights_dir)
    z, target = encode_pairs(codec, [kodak_dir / "kodim03.png", kodak_dir / "kodim23.png"], size=128)
    assert preview_psnr(preview, z, target) >= PSNR_FLOOR_DB[family]


def test_families_sharing_latents_share_a_preview():
    assert set(shipped_families()) >= {"sd1", "sdxl", "sd3", "flux1", "flux2"}
    svd = load_linear_preview("svd")  # SVD's latents are SD's (same encoder and scaling)
    assert torch.equal(svd.weight, load_linear_preview("sd1").weight) and svd.latent_space_name == "svd"


# -- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: load_linear_preview("sdxx"), "unknown latent space 'sdxx'"),
        (lambda: load_linear_preview("wan2.1"), "no linear preview ships for wan2.1"),
        (lambda: load_linear_preview("sdxl")(torch.randn(1, 16, 4, 4)), "expected latents (B, 4, h, w)"),
        (lambda: fit_linear(torch.randn(2, 4, 3, 3), torch.randn(2, 3, 4, 4)), "over the same cells"),
        (lambda: LinearPreview(torch.randn(4, 4), torch.zeros(3)), "expected weight (3, C)"),
    ],
)
def test_bad_input_is_one_line(call, words):
    with pytest.raises(FastDecodersError) as e:
        call()
    assert words in str(e.value) and "\n" not in str(e.value)


def test_bad_preview_arguments_are_one_line(tmp_path):
    pipe, _ = tiny_pipeline("sd")
    for kwargs, words in [
        ({"decoder": "taef1"}, "decodes flux1 latents, but the pipeline makes sd1"),
        ({"latents": "nope"}, "unknown latent space 'nope'"),
        ({"every": 0}, "every must be a positive int"),
        ({"sink": tmp_path / "steps.txt"}, "expected a folder or a file ending"),
    ]:
        with pytest.raises(FastDecodersError) as e:
            fastdecoders.preview(pipe, **kwargs)
        assert words in str(e.value) and "\n" not in str(e.value)
    preview = fastdecoders.preview(pipe)
    with pytest.raises(FastDecodersError, match="needs 'latents' in callback_on_step_end_tensor_inputs"):
        preview(pipe, 0, 999, {"prompt_embeds": torch.zeros(1)})


# -- the callback on tiny pipelines ---------------------------------------------------------------------------------


def _images(pipe, kwargs, **extra):
    out = pipe(**kwargs, generator=torch.Generator().manual_seed(0), output_type="pt", **extra)
    return out.frames if hasattr(out, "frames") else out.images


def test_preview_leaves_the_result_unchanged_and_writes_n_pngs(tmp_path):
    pipe, kwargs = tiny_pipeline("sd")
    kwargs = {**kwargs, "height": 32, "width": 32, "num_inference_steps": 5}
    plain = _images(pipe, kwargs)
    with fastdecoders.preview(pipe, "linear", every=2, sink=tmp_path / "steps", x0=True) as preview:
        previewed = _images(pipe, kwargs, callback_on_step_end=preview)
    assert torch.equal(previewed, plain)
    # steps 0, 2, 4 (every 2nd; the last one always)
    assert sorted(p.name for p in (tmp_path / "steps").iterdir()) == [f"step_{i:04d}.png" for i in (0, 2, 4)]
    with Image.open(tmp_path / "steps" / "step_0004.png") as im:
        assert im.size == (4, 4 * 2 + 2)  # latents row over x0 row, 2 px apart, at the 4x4 latent grid
    assert pipe.scheduler.step.__self__ is pipe.scheduler  # the x0 wrapper was removed


def test_tae_preview_animation_and_unchanged_result(tmp_path, taesd_weights_dir):
    pipe, kwargs = tiny_pipeline("sd")
    kwargs = {**kwargs, "height": 32, "width": 32, "num_inference_steps": 4}
    plain = _images(pipe, kwargs)
    for sink in ("steps.webp", "steps.gif"):
        preview = fastdecoders.preview(pipe, "taesd", sink=tmp_path / sink, weights_dir=taesd_weights_dir)
        assert torch.equal(_images(pipe, kwargs, callback_on_step_end=preview), plain)
        with Image.open(tmp_path / sink) as im:  # written at the last step, one frame per step
            assert (im.n_frames, im.size) == (4, (32, 32))


def test_preview_composes_with_the_users_callback():
    pipe, kwargs = tiny_pipeline("sd")
    kwargs = {**kwargs, "height": 32, "width": 32, "num_inference_steps": 3}
    calls = []

    def halve_at_step_1(pipe, step, timestep, callback_kwargs):
        calls.append(step)
        return {"latents": callback_kwargs["latents"] * 0.5} if step == 1 else {}

    own = _images(pipe, kwargs, callback_on_step_end=halve_at_step_1)
    preview = fastdecoders.preview(pipe, callback=halve_at_step_1)
    both = _images(pipe, kwargs, callback_on_step_end=preview)
    assert torch.equal(both, own) and calls == [0, 1, 2] * 2 and preview.count == 3
    assert not torch.equal(own, _images(pipe, kwargs))  # the user's callback did change the result


def test_flux_packed_latents_and_callable_sink():
    pipe, kwargs = tiny_pipeline("flux")
    kwargs = {**kwargs, "height": 32, "width": 48, "num_inference_steps": 2}
    seen = []
    preview = fastdecoders.preview(pipe, sink=seen.append, height=32, width=48, x0=True)
    assert torch.equal(_images(pipe, kwargs, callback_on_step_end=preview), _images(pipe, kwargs))
    preview.close()
    assert [f.step for f in seen] == [0, 1]
    assert seen[0].images.shape == seen[0].x0.shape == (1, 3, 4, 6)  # unpacked 2x3 tokens of 2x2 cells
    assert 0 <= seen[0].images.min() and seen[0].images.max() <= 1
    with pytest.raises(FastDecodersError, match="6 packed tokens are not a square; pass height= and width="):
        fastdecoders.preview(pipe)(pipe, 0, 1.0, {"latents": torch.zeros(1, 6, 64)})


def test_video_pipeline_previews_frames():
    pipe, kwargs = tiny_pipeline("svd")
    kwargs = {**kwargs, "height": 32, "width": 32, "num_frames": 3, "num_inference_steps": 2, "decode_chunk_size": 3}
    preview = fastdecoders.preview(pipe)  # SVD latents are SD's: the sd1 linear preview
    assert torch.equal(_images(pipe, kwargs, callback_on_step_end=preview), _images(pipe, kwargs))
    assert [tuple(f.images.shape) for f in preview.frames] == [(1, 3, 3, 4, 4)] * 2


# -- preview fit (CLI) ----------------------------------------------------------------------------------------------


def test_cli_preview_fit(tmp_path, capsys, kodak_dir, taesd_weights_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("kodim01.png", "kodim05.png", "kodim14.png"):
        (photos / name).symlink_to(kodak_dir / name)
    out = tmp_path / "sdxl_preview.json"
    code, stdout, _ = run_cli(capsys, "preview", "fit", "--vae", "taesdxl", "--images", photos, "--size", 64,
                              "--weights-dir", taesd_weights_dir, "-o", out)  # fmt: skip
    assert code == 0 and "held-out" in stdout
    fitted = LinearPreview.load(out)
    # 2 photos x 64 cells for 5 unknowns per colour: the held-out photo still comes out as an image (> 15 dB)
    assert fitted.latent_space_name == "sdxl" and fitted.fit["psnr_heldout_db"] > 15
    code, _, err = run_cli(capsys, "preview", "fit", "--vae", "taesdxl", "--images", photos, "-o", tmp_path / "x.txt")
    assert code == 2 and "expected a file name ending in .json" in one_error_line(err)
    code, _, err = run_cli(capsys, "preview", "fit", "--vae", "nope", "--images", photos, "-o", out)
    assert code == 2 and "nope" in one_error_line(err)


def test_cli_preview_fit_on_a_diffusers_vae_folder(tmp_path, capsys, kodak_dir):
    import diffusers

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8, scaling_factor=0.13025,
    )  # fmt: skip
    vae.save_pretrained(tmp_path / "vae")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("kodim02.png", "kodim07.png"):
        (photos / name).symlink_to(kodak_dir / name)
    out = tmp_path / "p.json"
    code, stdout, err = run_cli(capsys, "preview", "fit", "--vae", tmp_path / "vae", "--images", photos, "--size", 32,
                                "-o", out, "--json")  # fmt: skip
    assert code == 0, err
    result = __import__("json").loads(stdout)
    # the checkpoint's scaling names the family; a random VAE decodes to near-constant images, which a linear map
    # fits well: the number only shows the fit ran end to end on its own encoder and decoder
    assert result["latents"] == "sdxl" and result["psnr_fit_db"] > 10 and "its own encoder" in result["encoder"]
    assert LinearPreview.load(out).latent_channels == 4


def test_unpack_tokens_inverts_the_pipelines_packing():
    from diffusers import FluxPipeline, LTXPipeline

    from fastdecoders.latents import unpack_tokens

    image = torch.randn(2, 16, 6, 10)
    packed = FluxPipeline._pack_latents(image, 2, 16, 6, 10)
    assert torch.equal(unpack_tokens(packed, 6, 10, get_latent_space("flux1").pipeline_packing), image)
    video = torch.randn(1, 128, 3, 4, 5)
    packed = LTXPipeline._pack_latents(video, 1, 1)
    assert torch.equal(unpack_tokens(packed, 4, 5, get_latent_space("ltx-video").pipeline_packing, frames=3), video)
    with pytest.raises(FastDecodersError, match=r"expected \(B, 15, C·4\) tokens"):
        unpack_tokens(packed, 6, 10, (1, 2))


def test_video_decoder_preview_on_a_wan_pipeline():
    pipe, kwargs = tiny_pipeline("wan")
    kwargs = {**kwargs, "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2}
    decoder = fastdecoders.build_decoder("taew2_1", tiny=True)  # random weights: the plumbing, not the picture
    preview = fastdecoders.preview(pipe, decoder, x0=True)  # flow matching: x0 = x_t - sigma * v
    assert torch.equal(_images(pipe, kwargs, callback_on_step_end=preview), _images(pipe, kwargs))
    # 2 latent frames -> 1 + 4 pixel frames, at full resolution
    assert [tuple(f.images.shape) for f in preview.frames] == [(1, 3, 5, 32, 32)] * 2
    assert preview.frames[-1].x0.shape == (1, 3, 5, 32, 32)


def test_mp4_sink_holds_one_frame_per_preview(tmp_path):
    pytest.importorskip("av")
    from fastdecoders.io import read_video

    pipe, kwargs = tiny_pipeline("sdxl")
    kwargs = {**kwargs, "height": 64, "width": 64, "num_inference_steps": 3}
    with fastdecoders.preview(pipe, "linear", sink=tmp_path / "steps.mp4") as preview:
        _images(pipe, kwargs, callback_on_step_end=preview)
    frames, _ = read_video(tmp_path / "steps.mp4")
    assert frames.shape == (3, 3, 8, 8)  # 3 steps, the 8x8 latent grid


def test_preview_inside_a_decoder_swap(taesd_weights_dir):
    pipe, kwargs = tiny_pipeline("sd")
    kwargs = {**kwargs, "height": 32, "width": 32, "num_inference_steps": 2}
    with fastdecoders.use(pipe, "taesd", weights_dir=taesd_weights_dir):  # pipe.vae is the adapter now
        swapped = _images(pipe, kwargs)
        preview = fastdecoders.preview(pipe)  # the family comes from the adapter
        assert torch.equal(_images(pipe, kwargs, callback_on_step_end=preview), swapped)
    assert preview.space.name == "sd1" and preview.count == 2
