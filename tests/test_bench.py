"""``fastdecoders bench``: timing with a fake clock, FLOPs against hand counts, teacher pairing, the CLI's JSON, plot
and one-line errors, and the end-to-end pipeline mode on tiny pipelines. No assertion is about how fast anything is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fastdecoders.bench.flops import count_flops, peak_tflops
from fastdecoders.bench.pipeline import PIPELINES, TEACHERS, compose, pipeline_size, timed_call
from fastdecoders.bench.speed import (
    ROW_KEYS,
    Size,
    fill_speedups,
    make_inputs,
    parse_dtype,
    parse_size,
    teachers_for,
)
from fastdecoders.bench.timing import CpuPeak, summarize, time_fn
from fastdecoders.cli import main
from fastdecoders.errors import FastDecodersError
from fastdecoders.models import build_decoder
from fastdecoders.models.diffusers_vae import PUBLISHED, teacher_for

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeClock:
    """A clock that moves only when told (seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- timing -----------------------------------------------------------------------------------------------------------


def test_time_fn_with_a_fake_clock():
    clock = FakeClock()
    durations = iter([9.0, 9.0, 0.004, 0.001, 0.003, 0.010, 0.002])  # two warm-up calls, then five timed
    calls, syncs = [], []

    def fn():
        calls.append(1)
        clock.advance(next(durations))

    timing = time_fn(fn, warmup=2, runs=5, clock=clock, sync=lambda: syncs.append(1))
    assert len(calls) == 7
    assert len(syncs) == 1 + 5, "one sync after warm-up, one inside every timed run"
    assert timing.runs == 5
    assert timing.ms_median == pytest.approx(3.0)
    assert timing.ms_min == pytest.approx(1.0)
    assert timing.ms_spread == pytest.approx(9.0)


def test_summarize_and_bad_runs():
    assert summarize([5.0]).ms_median == 5.0 and summarize([5.0]).ms_spread == 0.0
    assert summarize([1.0, 2.0, 3.0, 10.0]).ms_median == 2.5
    with pytest.raises(ValueError):
        time_fn(lambda: None, runs=0)


def test_cpu_peak_sees_an_allocation():
    tracker = CpuPeak()
    tracker.start()
    block = torch.ones(16 * 2**20)  # 64 MiB, written so the pages are resident
    grown = tracker.growth()
    del block
    if not tracker.exact:
        pytest.skip("the peak RSS cannot be reset on this OS; CpuPeak falls back to an upper bound")
    assert grown >= 60 * 2**20


# -- FLOPs ------------------------------------------------------------------------------------------------------------


def test_flops_of_one_conv_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 16, 16)
    assert count_flops(lambda: conv(x)) == 2 * 3 * 8 * 3 * 3 * 16 * 16 * 2  # 2·Cin·Cout·k²·H·W per image


def test_flops_of_a_tiny_decoder_by_hand():
    """Every conv of tiny taesdxl, counted by the formula on its output shape, equals the flop counter's total."""
    decoder = build_decoder("taesdxl", tiny=True).eval()
    z = torch.randn(1, 4, 8, 8)
    total = []

    def hook(m: nn.Conv2d, inputs, out: torch.Tensor) -> None:
        k = m.kernel_size[0] * m.kernel_size[1]
        total.append(2 * m.in_channels // m.groups * m.out_channels * k * out.shape[0] * out.shape[2] * out.shape[3])

    hooks = [m.register_forward_hook(hook) for m in decoder.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        decoder(z)
    for h in hooks:
        h.remove()
    assert len(total) > 5
    assert count_flops(lambda: decoder(z)) == sum(total)


def test_peak_for_a_dtype():
    peaks = {"matmul_bf16_tflops": 700.0, "matmul_fp32_tflops": 50.0}
    assert peak_tflops(peaks, "fp16") == 700.0 and peak_tflops(peaks, "fp32") == 50.0
    assert peak_tflops({"matmul_fp32_tflops": 1.0}, "bf16") == 1.0  # CPU: fp32 only


# -- grid pieces -------------------------------------------------------------------------------------------------------


def test_every_teacher_is_registered_for_its_family():
    for name, (space, vae_class, _) in PUBLISHED.items():
        assert teacher_for(space) == name
        with torch.device("meta"):  # the published (full) config; meta tensors: no memory, no init time
            decoder = build_decoder(name)
        assert decoder.latent_space_name == space and decoder.registry_name == name
        assert type(decoder.vae).__name__ == vae_class and decoder.vae.encoder is None, "decode path only"
    assert teacher_for("flux2") is None


def test_teacher_pairing_and_speedups():
    with torch.device("meta"):
        decoders = [build_decoder(n) for n in ("taesdxl", "tae192-sdxl", "tae-temporal-svd", "taef2")]
    assert teachers_for(decoders) == {"sdxl": "sdxl-vae", "svd": "svd-vae"}
    rows = [
        {"decoder": "taesdxl", "shape": "1x3x512x512", "dtype": "fp16", "backend": "eager", "ms_median": 2.0,
         "peak_mem_mb": 100.0, "teacher": "sdxl-vae"},
        {"decoder": "sdxl-vae", "shape": "1x3x512x512", "dtype": "fp16", "backend": "eager", "ms_median": 30.0,
         "peak_mem_mb": 1500.0, "teacher": "sdxl-vae"},
        {"decoder": "taesdxl", "shape": "1x3x512x512", "dtype": "fp16", "backend": "compile", "ms_median": 1.0,
         "peak_mem_mb": 90.0, "teacher": "sdxl-vae"},  # no teacher row on this backend
        {"decoder": "taef2", "shape": "1x3x512x512", "dtype": "fp16", "backend": "eager", "ms_median": 1.0,
         "peak_mem_mb": 90.0, "teacher": None},
    ]  # fmt: skip
    fill_speedups(rows)
    assert rows[0]["speedup_vs_teacher"] == pytest.approx(15.0)
    assert rows[0]["mem_ratio_vs_teacher"] == pytest.approx(15.0)
    assert rows[1]["speedup_vs_teacher"] == pytest.approx(1.0)
    assert rows[2]["speedup_vs_teacher"] is None and rows[3]["speedup_vs_teacher"] is None


def test_sizes_and_dtypes_parse():
    assert parse_size("512") == Size(512, 512)
    assert parse_size("480x832") == Size(480, 832)
    assert parse_size("81x480x832") == Size(480, 832, 81)
    assert parse_dtype("float16") == "fp16" and parse_dtype("BF16") == "bf16"
    for bad in ("0", "-8", "8x", "axb", "1x2x3x4"):
        with pytest.raises(FastDecodersError, match="--sizes"):
            parse_size(bad)
    with pytest.raises(FastDecodersError, match="expected some of fp32, fp16, bf16, got 'fp8'"):
        parse_dtype("fp8")


def test_inputs_for_image_temporal_and_video_decoders():
    """The issue's video shapes map to the latent frame arithmetic of each family (meta tensors: no compute)."""
    with torch.device("meta"):
        wan, ltx, svd, sdxl = (build_decoder(n) for n in ("wan2.1-vae", "ltx-vae", "tae-temporal-svd", "taesdxl"))
    (z,), kw, shape = make_inputs(wan, parse_size("81x480x832"), 1, 3, "meta", torch.float16)
    assert z.shape == (1, 16, 21, 60, 104) and shape == "1x3x81x480x832" and kw == {}
    (z,), _, shape = make_inputs(ltx, parse_size("121x512x768"), 2, 3, "meta", torch.float16)
    assert z.shape == (2, 128, 16, 16, 24) and shape == "2x3x121x512x768"
    (z,), kw, shape = make_inputs(svd, parse_size("14x576x1024"), 1, 3, "meta", torch.float16)
    assert z.shape == (14, 4, 72, 128) and kw == {"num_frames": 14}
    (z,), _, shape = make_inputs(sdxl, parse_size("14x576x1024"), 1, 3, "meta", torch.float16)
    assert z.shape == (14, 4, 72, 128) and shape == "1x3x14x576x1024"  # frame by frame
    with pytest.raises(FastDecodersError, match="multiples of 8 pixels, got 500"):
        make_inputs(sdxl, parse_size("500"), 1, 3, "meta", torch.float32)
    with pytest.raises(FastDecodersError, match="1 \\+ 4"):
        make_inputs(wan, parse_size("80x480x832"), 1, 3, "meta", torch.float32)


# -- the CLI -----------------------------------------------------------------------------------------------------------


def _bench(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["bench", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_json_schema_plot_and_skips(capsys, tmp_path):
    plot = tmp_path / "sub" / "latency.png"
    code, out, err = _bench(capsys, "taesdxl", "taesd", "--tiny", "--sizes", "64,2x64x64", "--runs", "2",
                            "--warmup", "1", "--backend", "eager,cuda-graphs", "--device", "cpu", "--json",
                            "-o", str(plot))  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert isinstance(result["device"], str)
    names = {r["decoder"] for r in result["rows"]}
    assert names == {"taesdxl", "taesd", "sdxl-vae", "sd-vae"}, "each family's teacher is measured in the same run"
    assert len(result["rows"]) == 4 * 2
    for row in result["rows"]:
        assert set(ROW_KEYS) <= set(row)
        assert row["backend"] == "eager" and row["dtype"] == "fp32"
        assert row["shape"] in ("1x3x64x64", "1x3x2x64x64")
        for key in ("ms_median", "ms_min", "peak_mem_mb", "gflops", "tflops", "speedup_vs_teacher"):
            assert isinstance(row[key], float) and row[key] > 0, key
        assert row["ms_min"] <= row["ms_median"]
        assert row["teacher"] == {"taesdxl": "sdxl-vae", "taesd": "sd-vae"}.get(row["decoder"], row["decoder"])
        assert row["tflops"] == pytest.approx(row["gflops"] / row["ms_median"])
    assert {s["backend"] for s in result["skipped"]} == {"cuda-graphs"}
    assert all("needs a CUDA device" in s["reason"] for s in result["skipped"])
    assert result["device_peak"]["matmul_fp32_tflops"] > 0 and result["device_peak"]["copy_gbps"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_table_without_json(capsys, tmp_path):
    code, out, err = _bench(capsys, "taesdxl", "--tiny", "--no-teacher", "--no-peak", "--sizes", "32", "--runs", "1",
                            "--warmup", "0", "-o", str(tmp_path / "b.png"))  # fmt: skip
    assert code == 0, err
    assert "ms_median" in out and "taesdxl" in out and "1x3x32x32" in out
    assert (tmp_path / "b.png").is_file()


def test_cli_skips_frame_counts_a_video_decoder_cannot_make(capsys, tmp_path):
    code, out, err = _bench(capsys, "taew2_1", "--tiny", "--sizes", "5x32x32,4x32x32", "--runs", "1",
                            "--warmup", "0", "--no-peak", "--json", "-o", str(tmp_path / "v.png"))  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert {(r["decoder"], r["shape"]) for r in result["rows"]} == {
        ("taew2_1", "1x3x5x32x32"), ("wan2.1-vae", "1x3x5x32x32")}  # fmt: skip
    assert {(s["decoder"], s["shape"]) for s in result["skipped"]} == {
        ("taew2_1", "4x32x32"), ("wan2.1-vae", "4x32x32")}  # fmt: skip
    assert all("1 + 4" in s["reason"] for s in result["skipped"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["taesdlx"], "did you mean taesdxl"),
        (["taesdxl", "--sizes", "60"], "multiples of 8 pixels, got 60"),
        (["taesdxl", "--sizes", "0"], "expected N, HxW or TxHxW of positive integers, got '0'"),
        (["taesdxl", "--dtype", "fp8"], "expected some of fp32, fp16, bf16, got 'fp8'"),
        (["taesdxl", "--backend", "tensorrt"], "--backend: expected some of"),
        (["taesdxl", "--runs", "0"], "--runs >= 1"),
        ([], "expected decoder names or paths"),
        (["--pipeline", "flux"], "--pipeline: expected one of sdxl, svd, wan2.1, got 'flux'"),
        (["--pipeline", "wan2.1", "--sizes", "80x480x832"], "no latent frame count decodes to 80 frames"),
        (["--pipeline", "sdxl", "--steps", "0,4"], "--steps: expected positive step counts"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    code, out, err = _bench(capsys, *argv, "--tiny", "--device", "cpu", "-o", str(tmp_path / "x.png"))
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cli_cuda_without_a_gpu(capsys):
    code, _, err = _bench(capsys, "taesdxl", "--device", "cuda", "--dtype", "fp16")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no CUDA GPU" in err


# -- end to end --------------------------------------------------------------------------------------------------------


class FakeVAE:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def decode(self, z):
        self.clock.advance(0.5)
        return z


class FakePipe:
    """Each call: 0.2 s preparation, 1 s per step, a 0.5 s decode, 0.1 s post-processing (fake seconds)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.vae = clock, FakeVAE(clock)

    def __call__(self, num_inference_steps: int, output_type: str, callback_on_step_end, **kwargs):
        self.clock.advance(0.2)
        for i in range(num_inference_steps):
            self.clock.advance(1.0)
            callback_on_step_end(self, i, 999 - i, {})
        out = self.vae.decode("latents")
        self.clock.advance(0.1)
        return out


def test_timed_call_splits_steps_decode_and_the_rest():
    clock = FakeClock()
    pipe = FakePipe(clock)
    run = timed_call(pipe, {}, 3, sync=lambda: None, clock=clock)
    assert run.total_ms == pytest.approx(3800.0)
    assert run.step_ms == pytest.approx([1000.0, 1000.0])
    assert run.decode_ms == pytest.approx(500.0)
    assert run.fixed_ms == pytest.approx(300.0)
    assert "decode" not in vars(pipe.vae), "the timing wrapper is removed after the call"
    assert compose(1000.0, 300.0, 500.0, 30) == pytest.approx(30800.0)


def test_pipeline_sizes():
    assert pipeline_size("wan2.1", None, tiny=False) == Size(480, 832, 81)
    assert pipeline_size("svd", Size(576, 1024), tiny=False) == Size(576, 1024, 14)
    with pytest.raises(FastDecodersError, match="sdxl makes images"):
        pipeline_size("sdxl", Size(64, 64, 3), tiny=True)
    assert set(TEACHERS) == set(PIPELINES)


def test_cli_pipeline_mode_on_a_tiny_sdxl(capsys, tmp_path):
    code, out, err = _bench(capsys, "--pipeline", "sdxl", "--tiny", "--steps", "1,4,30", "--decoder", "taesdxl",
                            "--runs", "1", "--warmup", "0", "--device", "cpu", "--json",
                            "-o", str(tmp_path / "e2e.png"))  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["mode"] == "pipeline" and result["method"].startswith("composed")
    assert [r["steps"] for r in result["rows"]] == [1, 4, 30]
    for row in result["rows"]:
        assert row["decoder"] == "taesdxl" and row["teacher"] == "sdxl-vae" and row["shape"] == "1x3x64x64"
        assert 0 < row["decoder_share_teacher"] < 1 and 0 < row["decoder_share"] < 1
        assert row["speedup_e2e"] == pytest.approx(row["ms_total_teacher"] / row["ms_total"])
        assert row["ms_total_teacher"] == pytest.approx(
            row["ms_total_teacher"] - row["ms_decode_teacher"] + row["ms_decode_teacher"]
        )
    first, last = result["rows"][0], result["rows"][-1]
    assert last["ms_total_teacher"] - first["ms_total_teacher"] == pytest.approx(29 * first["ms_step"])
    assert last["decoder_share_teacher"] < first["decoder_share_teacher"], "more steps: a smaller decoder share"
    assert Path(result["plot"]).read_bytes()[:4] == b"\x89PNG"


def test_cli_pipeline_full_run_on_a_tiny_wan(capsys, tmp_path):
    code, out, err = _bench(capsys, "--pipeline", "wan2.1", "--tiny", "--steps", "2", "--full", "--runs", "1",
                            "--warmup", "0", "--device", "cpu", "--json", "-o", str(tmp_path / "e2e.png"))  # fmt: skip
    assert code == 0, err
    (row,) = json.loads(out)["rows"]
    assert row["method"] == "measured" and row["steps"] == 2 and row["shape"] == "1x3x5x32x32"
    assert row["decoder"] == "taew2_1" and row["teacher"] == "wan2.1-vae"
    assert 0 < row["ms_decode"] < row["ms_total"] and 0 < row["ms_decode_teacher"] < row["ms_total_teacher"]


# -- teachers with real weights ----------------------------------------------------------------------------------------


def test_teacher_loads_from_a_local_diffusers_folder(tmp_path):
    """A saved diffusers VAE folder (here a tiny one) loads as a teacher whose latent space is recognised."""
    import diffusers

    from fastdecoders.weights import load_decoder

    vae = diffusers.AutoencoderKL(block_out_channels=(8,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4,
                                  scaling_factor=0.13025)  # fmt: skip
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    decoder = load_decoder(tmp_path / "pipe")
    assert decoder.latent_space_name == "sdxl" and decoder.vae.encoder is None
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        expected = vae.decode(z / 0.13025).sample
        assert torch.equal(decoder(z), expected)


def test_teacher_weights_offline_is_one_clear_line(tmp_path, monkeypatch):
    import huggingface_hub

    from fastdecoders.weights import load_decoder

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FastDecodersError) as info:
        load_decoder("sdxl-vae", weights_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message and "stabilityai/sdxl-vae" in message and str(tmp_path / "sdxl-vae") in message
