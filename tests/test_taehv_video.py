"""TAEHV decoders in use: diffusers video VAEs swapped (Wan pipeline end to end; HunyuanVideo and CogVideoX VAEs via
the adapter), clips streamed straight into an MP4, and the bundled encoder behind ``roundtrip`` and ``eval --videos``.
Random weights (the published files are not available here): shapes, frame counts and equality with our own parallel
decode are what is checked."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch

import fastdecoders
from fastdecoders.errors import FastDecodersError
from fastdecoders.models import build_decoder
from fastdecoders.video import stream_frames, write_stream

pytestmark = pytest.mark.usefixtures("one_thread")
av = pytest.importorskip("av")


def test_stream_frames_equal_parallel_and_write_stream_writes_every_frame(tmp_path):
    decoder = build_decoder("taew2_1", tiny=True).eval()
    z = torch.randn(1, 16, 4, 4, 6)
    with torch.no_grad():
        whole = fastdecoders.latents.to_01(decoder(z))[0].transpose(0, 1)  # (T, 3, H, W)
    frames = torch.stack(list(stream_frames(decoder, z, chunk=3)))
    assert frames.shape == whole.shape == (13, 3, 32, 48)
    assert (frames - whole).abs().max() <= 1e-5
    result = write_stream(decoder, z, tmp_path / "clip.mp4", fps=8)
    assert result["frames"] == 13
    video, fps = fastdecoders.io.read_video(tmp_path / "clip.mp4")
    assert video.shape == (13, 3, 32, 48) and fps == 8


def test_write_stream_refuses_bad_clips_and_writes_nothing(tmp_path):
    h3 = build_decoder("taeh3", tiny=True).eval()
    with pytest.raises(FastDecodersError, match="minimax-h3: 3 latent frames; expected t = 5·n − 3"):
        write_stream(h3, torch.randn(1, 24, 3, 2, 2), tmp_path / "h3.mp4")
    wan = build_decoder("taew2_1", tiny=True).eval()
    with pytest.raises(FastDecodersError, match=r"one clip of NCTHW latents \(1, C, t, h, w\)"):
        write_stream(wan, torch.randn(2, 16, 3, 2, 2), tmp_path / "two.mp4")
    with pytest.raises(FastDecodersError, match="cannot stream"):
        write_stream(build_decoder("taesdxl", tiny=True), torch.randn(1, 4, 3, 2, 2), tmp_path / "img.mp4")
    assert list(tmp_path.iterdir()) == []


def test_wan_pipeline_latents_stream_to_mp4_through_the_swap(tmp_path):
    pytest.importorskip("transformers")
    from fastdecoders.testing.tiny_pipelines import tiny_pipeline

    pipe, kwargs = tiny_pipeline("wan")
    decoder = build_decoder("taew2_1", tiny=True)
    with fastdecoders.use(pipe, decoder) as swap:
        latents = pipe(**kwargs, height=32, width=32, num_frames=9, num_inference_steps=1,
                       output_type="latent", generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
        assert latents.shape == (1, 16, 3, 4, 4)  # diffusion space, as the pipeline samples it
        result = swap.write_video(latents, tmp_path / "wan.mp4", fps=16)
    assert result["frames"] == 9
    assert fastdecoders.io.read_video(tmp_path / "wan.mp4")[0].shape == (9, 3, 32, 32)


@pytest.mark.parametrize(
    ("vae_class", "narrow", "name", "frames"),
    [
        ("AutoencoderKLHunyuanVideo", dict(block_out_channels=(8,) * 4, norm_num_groups=4, layers_per_block=1),
         "taehv", (3,)),
        ("AutoencoderKLCogVideoX", dict(block_out_channels=(8,) * 4, norm_num_groups=4, layers_per_block=1),
         "taecvx", (2, 3)),  # even: 4·t frames; odd: 1 + 4·(t − 1), as the CogVideoX VAE
    ],
)  # fmt: skip
def test_use_with_hunyuan_and_cogvideox_vaes(vae_class, narrow, name, frames):
    diffusers = pytest.importorskip("diffusers")
    vae = getattr(diffusers, vae_class)(**narrow).eval()
    pipe = types.SimpleNamespace(vae=vae)  # the adapter only needs the pipeline's VAE
    decoder = build_decoder(name, tiny=True)
    scale = vae.config.scaling_factor
    with fastdecoders.use(pipe, decoder):
        for t in frames:
            raw = torch.randn(1, 16, t, 2, 3)
            with torch.no_grad():
                out = pipe.vae.decode(raw).sample  # what the pipeline calls, after dividing by scaling_factor
                want = decoder(raw * scale)
            assert out.shape == (1, 3, decoder.frame_space.pixel_frames(t), 16, 24)
            assert (out - want).abs().max() <= 1e-5
    assert pipe.vae is vae


def _cli(capsys, *args):
    from fastdecoders.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _upstream_file(tmp_path, name="taew2_1"):
    """A random tiny model saved as upstream saves it (a plain state dict under the upstream file name)."""
    path = tmp_path / f"{name}.pth"
    torch.save(build_decoder(name, tiny=True).state_dict(), path)
    return path


def test_roundtrip_uses_the_files_own_encoder(capsys, tmp_path):
    pytest.importorskip("skimage")
    code, out, err = _cli(capsys, "roundtrip", _upstream_file(tmp_path), "--size", "32", "--limit", "1",
                          "-o", tmp_path / "grid.png", "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["encoder"].endswith("(bundled)") and len(result["images"]) == 1
    assert (tmp_path / "grid.png").is_file()


def test_eval_videos_uses_the_files_own_encoder(capsys, tmp_path, shared_dir):
    videos = shared_dir / "data" / "videos" / "intel_sample_videos"
    code, out, err = _cli(capsys, "eval", _upstream_file(tmp_path), "--videos", videos, "--limit", "1",
                          "--clip-length", "5", "--clips-per-video", "1", "--size", "32",
                          "--metrics", "psnr,flicker", "-o", tmp_path / "ev", "--no-progress", "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    text = json.dumps(result)
    assert "taew2_1" in text and "flicker" in text


def test_taehv_student_trains_from_an_upstream_file_on_real_clips(tmp_path, shared_dir):
    """The taehv layout as the video student: initialised from an upstream-format file (what a user does with the
    published taew2_1.pth), distilled from a (tiny random) Wan VAE on 5-frame clips of real footage."""
    diffusers = pytest.importorskip("diffusers")
    from fastdecoders.train.config import config_from_dict
    from fastdecoders.train.loop import train

    torch.manual_seed(0)
    diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).save_pretrained(
        tmp_path / "tiny-wan"
    )
    values = {
        "teacher": {"vae": str(tmp_path / "tiny-wan"), "latents": "wan2.1"},
        "student": {"name": "taew2_1", "tiny": True, "init": str(_upstream_file(tmp_path))},
        "data": {"videos": [str(shared_dir / "data/videos/tokenflow")], "val_count": 1, "frames": 5,
                 "clips_per_video": 1, "resize": 64, "crop": 32, "val_size": 64, "flips": False,
                 "cache_dir": str(tmp_path / "cache")},
        "loss": {"pixel": 1.0, "distill": 1.0},
        "train": {"steps": 2, "batch_size": 2, "lr": 3e-3, "warmup_steps": 1, "precision": "fp32", "device": "cpu"},
        "log": {"every": 1, "val_every": 100, "sample_every": 100, "checkpoint_every": 100, "samples": 0,
                "tensorboard": False},
    }  # fmt: skip
    result = train(config_from_dict(values), tmp_path / "run")
    assert result["student"]["arch"] == "taehv" and result["latent_space"] == "wan2.1"
    assert math.isfinite(result["val"]["psnr"])
