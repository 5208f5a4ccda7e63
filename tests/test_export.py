"""ONNX export (every registered architecture's tiny config), the ONNX Runtime wrappers and streaming loop, the
``export`` verb's checks and exit codes, and the onnxruntime / auto backends with their cache.

Tolerances: float32 ONNX Runtime vs PyTorch within 1e-4 max abs diff on RGB in [-1, 1] (the export's own bound;
seen: ~1e-7 on tiny configs, ~1e-5 on real TAESDXL at 512²).
"""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from cli_helpers import one_error_line, run_cli  # noqa: E402

from fastdecoders import backends  # noqa: E402
from fastdecoders.errors import FastDecodersError  # noqa: E402
from fastdecoders.export import SUPPORTED, OnnxDecoder, export_model  # noqa: E402
from fastdecoders.export.onnx import check_arch  # noqa: E402
from fastdecoders.export.stream import OnnxStreamingDecoder  # noqa: E402
from fastdecoders.export.verify import FP32_TOLERANCE, verify  # noqa: E402
from fastdecoders.fast import optimize  # noqa: E402
from fastdecoders.models import build_decoder  # noqa: E402
from fastdecoders.models.fileformat import save_decoder  # noqa: E402
from fastdecoders.models.protocol import call_kind  # noqa: E402
from fastdecoders.registry import get_spec, list_decoders  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_per_architecture() -> dict[str, str]:
    first: dict[str, str] = {}
    for name in list_decoders():
        first.setdefault(get_spec(name).arch, name)
    return first


ARCHITECTURES = _one_per_architecture()


def _inputs(decoder, kind: str, hw=(4, 5), batch=1, frames=2) -> tuple[tuple, dict]:
    c = decoder.latent_channels
    if kind == "clip":
        return (torch.randn(batch * frames, c, *hw),), {"num_frames": frames}
    if kind == "stream":
        return (torch.randn(batch, c, frames, *hw),), {}
    return (torch.randn(batch, c, *hw),), {}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_exports_or_is_refused_in_one_line(arch):
    if arch not in SUPPORTED:  # refused from the registry entry (building e.g. a diffusers VAE costs seconds)
        with pytest.raises(FastDecodersError) as error:
            check_arch(arch, ARCHITECTURES[arch])
        assert "\n" not in str(error.value) and all(a in str(error.value) for a in SUPPORTED)
        return
    decoder = build_decoder(ARCHITECTURES[arch], tiny=True).eval()
    kind = SUPPORTED[arch]
    model, meta = export_model(decoder, (4, 5), batch=1, frames=2)
    assert meta["kind"] == kind and meta["inputs"]["latents"]["min"] == meta["inputs"]["latents"]["max"]
    report = verify(decoder, model, meta, real=False)
    assert report["ok"], report
    diffs = [c["max_abs_diff"] for c in report["checks"] if "max_abs_diff" in c]
    assert diffs and max(diffs) <= FP32_TOLERANCE
    # the wrappers agree with the decoder called the torch way
    args, kwargs = _inputs(decoder, kind)
    with torch.no_grad():
        expected = decoder(*args, **kwargs)
    data = model.SerializeToString()
    if kind == "stream":
        got = OnnxStreamingDecoder(data).decode(args[0], chunk=2)
    else:
        got = OnnxDecoder(data)(*args, **kwargs)
    assert got.shape == expected.shape and (got - expected).abs().max() <= FP32_TOLERANCE
    # a static export refuses another shape in one line of ours, naming the fix, before ONNX Runtime sees it
    other = (args[0][..., :3],)
    runner = OnnxStreamingDecoder(data).push if kind == "stream" else OnnxDecoder(data)
    with pytest.raises(FastDecodersError, match="--dynamic-shape") as error:
        runner(*other, **kwargs)
    assert "\n" not in str(error.value)


def test_dynamic_image_export_takes_its_range_and_refuses_outside_it():
    decoder = build_decoder("taesdxl", tiny=True).eval()
    path = backends.exported_file(decoder, torch.float32)  # the backend's dynamic export (cached for later tests)
    runner = OnnxDecoder(path)
    assert runner.meta["inputs"]["latents"] == {"min": [1, 4, 2, 2], "max": [64, 4, 512, 512]}
    for shape in [(1, 4, 2, 2), (3, 4, 7, 5)]:
        z = torch.randn(shape)
        with torch.no_grad():
            assert (runner(z) - decoder(z)).abs().max() <= FP32_TOLERANCE
    for shape in [(1, 4, 513, 8), (1, 4, 1, 8), (1, 3, 8, 8), (4, 8, 8)]:
        with pytest.raises(FastDecodersError, match=r"expected latents of shape \(1\.\.64, 4, 2\.\.512, 2\.\.512\)"):
            runner(torch.randn(shape))


def test_fp16_export_is_reported_and_finite():
    decoder = build_decoder("taesdxl", tiny=True).eval()
    model, meta = export_model(decoder, (4, 4), fp16=True)
    report = verify(decoder, model, meta, real=False)
    case = next(c for c in report["checks"] if c.get("latents") == "random")
    assert meta["dtype"] == "float16" and report["ok"] and case["tolerance"] is None
    assert 0 < case["max_abs_diff"] < 0.05  # fp16 rounding on RGB in [-1, 1], seen ~5e-4


def test_stream_loop_equals_parallel_decode_however_split():
    decoder = build_decoder("taew2_1", tiny=True).eval()
    streamer = OnnxStreamingDecoder(backends.exported_file(decoder, torch.float32))  # dynamic, cached
    z = torch.randn(2, 16, 5, 6, 3)
    with torch.no_grad():
        expected = decoder(z)  # Wan's rule: 1 + 4·(5 − 1) = 17 frames
    assert expected.shape[2] == 17
    for chunk in (1, 2, 5):
        got = streamer.decode(z, chunk=chunk)
        assert got.shape == expected.shape and (got - expected).abs().max() <= FP32_TOLERANCE, chunk
    # chunk by chunk: the first push gives 1 + 4·(t − 1) frames, later ones 4·t
    clip = streamer.clip()
    assert [clip.push(z[:, :, a:b]).shape[2] for a, b in ((0, 2), (2, 3), (3, 5))] == [5, 4, 8]
    with pytest.raises(FastDecodersError, match="cannot continue a clip"):
        clip.push(z[:1, :, :1])


@pytest.mark.shared
def test_stream_loop_on_real_wan_latents(shared_dir):
    from fastdecoders.io import read_latents

    latents = read_latents(shared_dir / "weights" / "test_data" / "taehv_test_latents_wan.pth").float()
    z = (latents if latents.shape[1] == 16 else latents.transpose(1, 2))[:, :, :5, :12, :12].contiguous()
    decoder = build_decoder("taew2_1", tiny=True).eval()
    model, meta = export_model(decoder, (12, 12), frames=1)  # static: one latent frame per step
    report = verify(decoder, model, meta, latents=z)
    real = next(c for c in report["checks"] if c.get("latents") == "real")
    assert report["ok"] and real["shape"] == "1x16x5x12x12" and real["max_abs_diff"] <= FP32_TOLERANCE


# -- the export verb ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_taesdxl(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny_taesdxl.safetensors"
    save_decoder(build_decoder("taesdxl", tiny=True), path)
    return path


def test_export_verb_writes_a_verified_file(capsys, tmp_path, tiny_taesdxl):
    out = tmp_path / "decoder.onnx"
    code, stdout, _ = run_cli(capsys, "export", tiny_taesdxl, "-o", out, "--size", "32", "--json")
    result = json.loads(stdout)
    assert code == 0 and result["ok"] and out.is_file() and result["out"] == str(out)
    assert [c["check"] for c in result["checks"]][:2] == ["onnx.checker", "ORT vs PyTorch"]
    runner = OnnxDecoder(out)
    assert runner.meta["latent_space"] == "sdxl" and runner.meta["inputs"]["latents"]["min"] == [1, 4, 4, 4]


def test_export_verb_fails_with_exit_1_and_no_file(capsys, tmp_path, tiny_taesdxl, monkeypatch):
    import fastdecoders.export.verify as verify_module

    out = tmp_path / "decoder.onnx"
    out.write_bytes(b"an older export")
    monkeypatch.setattr(verify_module, "FP32_TOLERANCE", 0.0)  # no float32 decode matches to 0: the check fails
    code, stdout, _ = run_cli(capsys, "export", tiny_taesdxl, "-o", out, "--size", "32")
    assert code == 1 and not out.exists() and "FAILED" in stdout and "NO" in stdout


def test_export_verb_bad_inputs(capsys, tmp_path, monkeypatch, tiny_taesdxl):
    code, _, err = run_cli(capsys, "export", "sdxl-vae", "-o", tmp_path / "x.onnx")
    line = one_error_line(err)
    assert code == 2 and "tae, effvit, tae-temporal, taehv" in line and "diffusers-vae" in line
    code, _, err = run_cli(capsys, "export", tiny_taesdxl, "-o", tmp_path / "x.onnx", "--size", "30")
    assert code == 2 and "multiples of 8" in one_error_line(err)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the onnx extra were not installed
    code, _, err = run_cli(capsys, "export", tiny_taesdxl, "-o", tmp_path / "x.onnx")
    assert code == 2 and "pip install 'fastdecoders[onnx]'" in one_error_line(err)
    assert not (tmp_path / "x.onnx").exists()


# -- backends -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "backend"), [("taesdxl", "onnxruntime"), ("tae-temporal-svd", "onnxruntime"),
                                               ("taew2_1", "onnxruntime"), ("taesdxl", "openvino")])  # fmt: skip
def test_runtime_backends_are_drop_ins(name, backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    decoder = build_decoder(name, tiny=True).eval()
    fast = optimize(copy.deepcopy(decoder), backend=backend)
    kind = SUPPORTED[decoder.arch]
    args, kwargs = _inputs(decoder, kind, hw=(5, 3), batch=2, frames=3)
    with torch.no_grad():
        expected = decoder(*args, **kwargs)
    assert fast.fastdecoders_backend == backend and call_kind(fast) == call_kind(decoder)
    assert fast.latent_space_name == decoder.latent_space_name and fast.receptive_field == decoder.receptive_field
    assert (fast.decode(*args, **kwargs).sample - expected).abs().max() <= FP32_TOLERANCE


def test_onnxruntime_backend_refuses_what_it_cannot_run():
    with pytest.raises(FastDecodersError, match="expected float32 or float16, got bfloat16"):
        optimize(build_decoder("taesdxl", tiny=True), backend="onnxruntime", dtype="bfloat16")
    from fastdecoders.models.tae import TAEConfig, TAEDecoder

    class Unexported(TAEDecoder):  # an architecture the exporter does not know
        arch = "unexported"

    with pytest.raises(FastDecodersError, match="expected a decoder of architecture .* got 'unexported'"):
        optimize(Unexported(TAEConfig(widths=(8,) * 4, blocks=(1,) * 4)), backend="onnxruntime")


def test_auto_measures_once_then_uses_the_cached_choice(monkeypatch):
    cache = backends.cache_dir()  # the session's temp cache: the onnxruntime candidate's export is reused
    monkeypatch.setattr(backends, "AUTO_MIN_GFLOPS", 0.0)  # tiny decodes are cheap: measure them anyway
    decoder = build_decoder("taesdxl", tiny=True)
    shape = (1, 4, 16, 16)
    first = backends.choose_backend(decoder, shape)
    measured = set(first["ms"]) | set(first["skipped"])
    assert not first["cached"] and measured == set(backends.candidates(torch.device("cpu")))
    assert {"eager", "channels_last", "onnxruntime"} <= set(first["ms"])
    assert first["backend"] == min(first["ms"], key=first["ms"].get)
    stored = json.loads((cache / "backends.json").read_text())
    key = backends.choice_key(decoder, shape, torch.float32, "cpu")
    assert key in stored  # the session cache may hold other tests' choices too
    assert {"decoder", "shape", "dtype", "device", "torch", "onnxruntime"} <= set(json.loads(key))
    again = backends.choose_backend(decoder, shape)
    assert again["cached"] and again["backend"] == first["backend"] and again["ms"] == first["ms"]
    fast = optimize(copy.deepcopy(decoder), backend="auto", shape=shape)
    assert fast.fastdecoders_backend == first["backend"] and fast.fastdecoders_auto["cached"]
    # another shape or dtype is another key
    assert backends.choice_key(decoder, (1, 4, 8, 8), torch.float32, "cpu") != key
    assert backends.choice_key(decoder, shape, torch.float16, "cpu") != key


def test_auto_keeps_eager_for_decodes_too_small_to_win(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTDECODERS_CACHE", str(tmp_path))
    choice = backends.choose_backend(build_decoder("taesdxl", tiny=True), (1, 4, 8, 8))  # ~1e-4 GFLOPs
    assert choice["backend"] == "eager" and choice["ms"] == {} and not choice["cached"]
    assert 0 < choice["gflops"] < backends.AUTO_MIN_GFLOPS and not (tmp_path / "backends.json").exists()


def test_decode_verb_with_the_onnxruntime_backend(capsys, tmp_path, tiny_taesdxl):
    from fastdecoders.io import read_image, write_latents

    latents = write_latents(torch.randn(1, 4, 6, 5), tmp_path / "z.safetensors")
    outs = {}
    for backend in ("eager", "onnxruntime"):
        code, stdout, _ = run_cli(capsys, "decode", tiny_taesdxl, latents, "-o", tmp_path / f"{backend}.png",
                                  "--backend", backend, "--json")  # fmt: skip
        assert code == 0 and json.loads(stdout)["backend"] == backend
        outs[backend] = read_image(tmp_path / f"{backend}.png")
    assert (outs["eager"] - outs["onnxruntime"]).abs().max() <= 1 / 255 + 1e-6  # one 8-bit level at most


def test_auto_measures_decode_shapes_capped():
    """What ``decode`` asks auto to measure: one call's latents, capped at 64² latents and 4 frames."""
    cases = [("taesdxl", (3, 4, 200, 100), ((1, 4, 64, 64), None)),
             ("taew2_1", (1, 16, 21, 60, 104), ((1, 16, 4, 60, 64), None)),
             ("tae-temporal-svd", (1, 14, 4, 72, 30), ((4, 4, 64, 30), 4)),  # SVD frames first: (B, T, C, h, w)
             ("taesdxl", (1, 2, 4, 8, 8), ((2, 4, 8, 8), None))]  # fmt: skip
    for name, shape, expected in cases:
        decoder = build_decoder(name, tiny=True)
        assert backends.call_shape(decoder, torch.zeros(shape, device="meta")) == expected, name


def test_bench_grid_times_the_runtime_backends():
    from fastdecoders.bench.speed import Grid, Size, run_grid

    grid = Grid(decoders=["taesdxl"], sizes=[Size(64, 64)], backends=["eager", "onnxruntime", "auto"], runs=1,
                warmup=0, teacher=False, tiny=True)  # fmt: skip
    rows, skipped = run_grid(grid, progress=False)
    # auto on a tiny config: under 1 GFLOP, so eager unmeasured; the row says what it ran
    assert [r["backend"] for r in rows] == ["eager", "onnxruntime", "auto:eager"] and not skipped
    assert all(r["ms_median"] > 0 and r["shape"] == "1x3x64x64" for r in rows)


@pytest.mark.shared
def test_export_verb_checks_real_weights_on_real_latents(capsys, tmp_path, taesd_weights_dir):
    out = tmp_path / "taesdxl.onnx"
    code, stdout, _ = run_cli(capsys, "export", "taesdxl", "-o", out, "--size", "64", "--weights-dir",
                              taesd_weights_dir, "--json")  # fmt: skip
    result = json.loads(stdout)
    real = next(c for c in result["checks"] if c.get("latents") == "real")
    assert code == 0 and out.is_file() and real["ok"] and real["max_abs_diff"] <= FP32_TOLERANCE  # seen ~1e-5
