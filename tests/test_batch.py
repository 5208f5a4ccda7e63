"""Batch decode/encode with the embedded engine (CPU, a tiny random TAESDXL decoder unless real weights are needed):
manifest and formats, resume, failures recorded while the job goes on, a driver SIGKILL then a rerun, the
encode -> training cache -> decode round trip, and the one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_error_line, run_cli
from PIL import Image

from fastdecoders import build_decoder, save_decoder
from fastdecoders.batch.job import DecodeJob, run_decode_job
from fastdecoders.batch.worker import DecoderArgs
from fastdecoders.shards import Shard, write_shard

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_decoder(build_decoder("taesdxl", tiny=True), tmp_path_factory.mktemp("dec") / "tiny.safetensors")


def make_shards(folder: Path, sizes: list[int], side: int = 8, seed: int = 0) -> list[Path]:
    """Shards of random sdxl latents (side x side cells), item ids s{shard}-{index}."""
    g = torch.Generator().manual_seed(seed)
    paths = []
    for k, n in enumerate(sizes):
        z = torch.randn(n, 4, side, side, generator=g)
        shard = Shard(z, [f"s{k}-{i:03d}" for i in range(n)], latent_space="sdxl", decoder="taesdxl")
        paths.append(write_shard(folder / f"shard-{k:05d}.safetensors", shard))
    return paths


def manifest_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.jsonl"}


def test_decode_many_shards_writes_images_and_a_manifest(capsys, tmp_path, tiny):
    make_shards(tmp_path / "in", [5, 3])
    torch.save(torch.randn(2, 4, 8, 8), tmp_path / "in" / "plain.pt")  # a plain latents file joins by file name
    code, out, _ = run_cli(capsys, "decode", tiny, tmp_path / "in", tmp_path / "in" / "plain.pt", "-o",
                           tmp_path / "out", "--batch-size", "2", "--json", "--no-progress")  # fmt: skip
    summary = json.loads(out)
    assert code == 0 and summary["exit_code"] == 0
    assert {k: summary[k] for k in ("items", "written", "failed", "engine", "workers")} == {
        "items": 10, "written": 10, "failed": 0, "engine": "embedded", "workers": 1}  # fmt: skip
    assert summary["items_per_s"] > 0 and summary["first_item_s"] <= summary["seconds"]
    rows = manifest_rows(tmp_path / "out" / "manifest.jsonl")
    expected = [f"s0-{i:03d}" for i in range(5)] + [f"s1-{i:03d}" for i in range(3)] + ["plain-00000", "plain-00001"]
    assert sorted(r["id"] for r in rows) == sorted(expected)
    for row in rows:
        assert row["status"] == "ok" and row["error"] is None and row["decoder"] == "taesdxl"
        assert Path(row["output"]).stat().st_size == row["bytes"] and row["seconds"] > 0
        assert Image.open(row["output"]).size == (64, 64)
    assert {r["index"] for r in rows if r["id"].startswith("s0")} == set(range(5))

    # JPEG/WebP with a quality: lower quality, smaller files
    sizes = {}
    for fmt, q in (("jpg", 20), ("jpg", 95), ("webp", 50)):
        target = tmp_path / f"{fmt}{q}"
        assert run_cli(capsys, "decode", tiny, tmp_path / "in" / "shard-00000.safetensors", "-o", target,
                       "--format", fmt, "--quality", q, "--no-progress")[0] == 0  # fmt: skip
        sizes[fmt, q] = sum(len(b) for b in files(target).values())
        assert Image.open(target / f"s0-000.{fmt}").format == {"jpg": "JPEG", "webp": "WEBP"}[fmt]
    assert sizes["jpg", 20] < sizes["jpg", 95]
    # PNG at zlib level 1: other bytes, the same pixels (lossless)
    assert run_cli(capsys, "decode", tiny, tmp_path / "in" / "shard-00000.safetensors", "-o", tmp_path / "png1",
                   "--png-level", "1", "--no-progress")[0] == 0  # fmt: skip
    for name in ("s0-000.png", "s0-004.png"):
        fast, default = Image.open(tmp_path / "png1" / name), Image.open(tmp_path / "out" / name)
        assert np.array_equal(np.asarray(fast), np.asarray(default))


def test_resume_skips_verified_items_and_redoes_missing_or_damaged_ones(tmp_path, tiny):
    make_shards(tmp_path / "in", [6])
    job = DecodeJob((str(tmp_path / "in"),), str(tmp_path / "out"), DecoderArgs(str(tiny)), batch_size=4,
                    progress=False)  # fmt: skip
    first = run_decode_job(job)
    reference = files(tmp_path / "out")
    (tmp_path / "out" / "s0-001.png").unlink()
    (tmp_path / "out" / "s0-004.png").write_bytes(b"truncated")  # the size no longer matches the manifest
    again = run_decode_job(job)
    assert (first["written"], again["written"], again["skipped"], again["failed"]) == (6, 2, 4, 0)
    assert files(tmp_path / "out") == reference  # the same batches (cut at fixed positions): the same bytes
    assert len(manifest_rows(tmp_path / "out" / "manifest.jsonl")) == 6  # compacted: one line per item
    assert run_decode_job(job)["written"] == 0
    assert run_decode_job(DecodeJob(**{**job.__dict__, "resume": False}))["written"] == 6


def test_corrupt_shard_and_nan_latents_are_recorded_and_the_job_goes_on(capsys, tmp_path, tiny):
    good, nan = make_shards(tmp_path / "in", [3, 3])
    shard = Shard(torch.randn(3, 4, 8, 8), ["n0", "n1", "n2"])
    shard.latents[1, 0, 2, 2] = float("nan")
    write_shard(nan, shard)
    (tmp_path / "in" / "shard-00002.safetensors").write_bytes(b"\x00" * 20)  # corrupt
    code, out, _ = run_cli(capsys, "decode", tiny, tmp_path / "in", "-o", tmp_path / "out", "--json",
                           "--no-progress")  # fmt: skip
    summary = json.loads(out)
    assert code == 1 and summary["exit_code"] == 1 and summary["failed"] == 2 and summary["failed_shards"] == 1
    rows = {r["id"]: r for r in manifest_rows(tmp_path / "out" / "manifest.jsonl")}
    assert rows["n1"]["status"] == "failed" and "NaN" in rows["n1"]["error"] and rows["n1"]["output"] is None
    corrupt = rows["shard:shard-00002.safetensors"]
    assert corrupt["status"] == "failed" and "not a readable latents shard" in corrupt["error"]
    ok = [i for i, r in rows.items() if r["status"] == "ok"]
    assert sorted(ok) == ["n0", "n2", "s0-000", "s0-001", "s0-002"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(f"{i}.png" for i in ok)


def test_driver_sigkill_then_rerun_leaves_each_item_once_and_none_partial(tmp_path, tiny):
    make_shards(tmp_path / "in", [20, 20], side=16)
    reference = tmp_path / "reference"
    run_decode_job(DecodeJob((str(tmp_path / "in"),), str(reference), DecoderArgs(str(tiny)), batch_size=2,
                             progress=False))  # fmt: skip
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fastdecoders", "decode", str(tiny), str(tmp_path / "in"), "-o", str(out),
           "--batch-size", "2", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and manifest.read_text().count("\n") >= 6:  # killed mid-job, between or in writes
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_before = manifest.read_text().count("\n")
    assert 6 <= done_before < 40
    # what a kill inside a write leaves: a temp file beside its output, and a torn manifest line
    (out / ".s1-019.png.ab12cd34.png").write_bytes(b"\x89PNG partial")
    with open(manifest, "a") as f:
        f.write('{"id": "s1-0')
    result = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    summary = json.loads(result.stdout)
    assert result.returncode == 0 and summary["failed"] == 0
    assert summary["written"] + summary["skipped"] == 40 and summary["skipped"] >= done_before - 1
    ids = [r["id"] for r in manifest_rows(manifest)]
    assert len(ids) == len(set(ids)) == 40
    assert not [p for p in out.rglob(".*")]  # no temp file left
    assert files(out) == files(reference)  # every item exactly once, complete, the same bytes as an unbroken run


def test_encode_then_train_cache_then_decode_round_trip(capsys, tmp_path, taesd_weights_dir, kodak_dir):
    from fastdecoders.eval.metrics import psnr
    from fastdecoders.io import read_image
    from fastdecoders.latents import get_latent_space, to_01
    from fastdecoders.train.data import Batches, read_split, to_uint8
    from fastdecoders.weights import load_decoder

    shards = tmp_path / "shards"
    code, out, _ = run_cli(capsys, "encode", "taesdxl_encoder", str(kodak_dir / "kodim0[1-5].png"), "-o", shards,
                           "--size", "64", "--shard-items", "3", "--pixels", "--decoder", "taesdxl",
                           "--weights-dir", taesd_weights_dir, "--json", "--no-progress")  # fmt: skip
    summary = json.loads(out)
    assert code == 0 and (summary["written"], summary["shards"], summary["failed"]) == (5, 2, 0)
    paths = sorted(shards.glob("shard-*.safetensors"))
    # the training cache reads encode's shards as they are
    split, skipped, _ = read_split(paths)
    assert split.names == [f"kodim0{i}" for i in range(1, 6)] and skipped == []
    assert split.pixels[0].shape == (3, 64, 64) and split.pixels[0].dtype == torch.uint8
    assert split.latents[0].shape == (4, 8, 8)
    batch = Batches(split, get_latent_space("sdxl"), crop=32, batch_size=2, seed=0, flips=False).batch(0)
    assert batch.latents.shape == (2, 4, 4, 4) and batch.pixels.shape == (2, 3, 32, 32)
    # and decode reads them back: real TAESDXL, close to the encoded pictures
    code, _, _ = run_cli(capsys, "decode", "taesdxl", shards, "-o", tmp_path / "png", "--weights-dir",
                         taesd_weights_dir, "--no-progress")  # fmt: skip
    assert code == 0
    decoder = load_decoder("taesdxl", weights_dir=taesd_weights_dir)
    with torch.inference_mode():
        direct = to_01(decoder(torch.stack(split.latents)))
    for i, name in enumerate(split.names):
        decoded = read_image(tmp_path / "png" / f"{name}.png")
        assert torch.equal(decoded, to_uint8(direct[i]).float() / 255)  # what the decoder gives, as 8-bit PNG
        # the picture it came from (TAESDXL on detailed 64-px Kodak crops: ~16 dB; another photo: ~10 dB)
        own = psnr(decoded[None], split.pixels[i][None].float() / 255).item()
        other = psnr(decoded[None], split.pixels[(i + 1) % 5][None].float() / 255).item()
        assert own > 13 and own > other + 2
    # a rerun finds every shard done
    code, out, _ = run_cli(capsys, "encode", "taesdxl_encoder", str(kodak_dir / "kodim0[1-5].png"), "-o", shards,
                           "--size", "64", "--shard-items", "3", "--pixels", "--weights-dir", taesd_weights_dir,
                           "--json", "--no-progress")  # fmt: skip
    assert code == 0 and (json.loads(out)["written"], json.loads(out)["skipped"]) == (0, 5)


def test_clip_shards_decode_to_mp4(capsys, tmp_path):
    from fastdecoders.io import read_video

    decoder = save_decoder(build_decoder("taesd", tiny=True), tmp_path / "tiny_sd1.safetensors")
    write_shard(tmp_path / "clips.safetensors", Shard(torch.randn(2, 3, 4, 8, 8), ["c0", "c1"]))  # (N, t, C, h, w)
    code, out, _ = run_cli(capsys, "decode", decoder, tmp_path / "clips.safetensors", "-o", tmp_path / "out",
                           "--engine", "embedded", "--json", "--no-progress")  # fmt: skip
    assert code == 0 and json.loads(out)["written"] == 2
    frames, _ = read_video(tmp_path / "out" / "c1.mp4")
    assert frames.shape == (3, 3, 64, 64)


def test_bad_invocations_exit_2_with_one_line(capsys, tmp_path, tiny, monkeypatch):
    make_shards(tmp_path / "a", [2])
    make_shards(tmp_path / "b", [2])  # the same ids again
    code, _, err = run_cli(capsys, "decode", tiny, tmp_path / "a", tmp_path / "b", "-o", tmp_path / "out")
    assert code == 2 and "ids must be unique" in one_error_line(err)
    code, _, err = run_cli(capsys, "decode", tiny, tmp_path / "a", "-o", tmp_path / "x.png")
    assert code == 2 and "folder" in one_error_line(err)
    code, _, err = run_cli(capsys, "decode", tiny, str(tmp_path / "none-*.safetensors"), "-o", tmp_path / "out")
    assert code == 2 and "found none" in one_error_line(err)
    monkeypatch.setitem(sys.modules, "ray", None)  # as without the [scale] extra
    code, _, err = run_cli(capsys, "decode", tiny, tmp_path / "a", "-o", tmp_path / "out", "--engine", "ray",
                           "--no-progress")  # fmt: skip
    assert code == 2 and "pip install 'fastdecoders[scale]'" in one_error_line(err)
    assert not (tmp_path / "out").exists()  # nothing written


def test_legacy_single_file_decode_is_unchanged(capsys, tmp_path, tiny):
    z = tmp_path / "z.safetensors"
    from fastdecoders.io import write_latents

    write_latents(torch.randn(2, 4, 8, 8), z)
    code, out, _ = run_cli(capsys, "decode", tiny, z, "-o", tmp_path / "out", "--json")
    assert code == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000.png", "00001.png"]
    assert not (tmp_path / "out" / "manifest.jsonl").exists() and "tiling" in json.loads(out)
    arrays = [np.asarray(Image.open(tmp_path / "out" / n)) for n in ("00000.png", "00001.png")]
    assert arrays[0].shape == (64, 64, 3)


def test_encode_videos_then_decode_to_mp4_and_a_summary_line(capsys, tmp_path, taesd_weights_dir):
    from fastdecoders.io import read_video, write_video

    write_video(torch.rand(9, 3, 64, 64), tmp_path / "in" / "clip.mp4")
    (tmp_path / "in" / "broken.mp4").write_bytes(b"not a video")
    code, out, _ = run_cli(capsys, "encode", "taesd_encoder", tmp_path / "in", "-o", tmp_path / "shards",
                           "--latents", "svd", "--frames", "8", "--weights-dir", taesd_weights_dir, "--json",
                           "--no-progress")  # fmt: skip
    summary = json.loads(out)
    assert code == 1 and (summary["written"], summary["failed"]) == (1, 1)  # the broken file is recorded
    rows = {r["id"]: r for r in manifest_rows(tmp_path / "shards" / "manifest.jsonl")}
    assert rows["broken"]["status"] == "failed" and "not a readable video" in rows["broken"]["error"]
    code, out, _ = run_cli(capsys, "decode", "taesd", tmp_path / "shards", "-o", tmp_path / "out", "--weights-dir",
                           taesd_weights_dir, "--no-progress")  # fmt: skip
    assert code == 0 and out.startswith("1 written, 0 already done")
    frames, _ = read_video(tmp_path / "out" / "clip.mp4")
    assert frames.shape == (8, 3, 64, 64)  # 8 frames encoded frame by frame (SVD latents), decoded back


def test_encode_on_ray_without_ray_exits_2_with_one_line(capsys, tmp_path, kodak_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as without the [scale] extra
    code, _, err = run_cli(capsys, "encode", "taesdxl_encoder", kodak_dir / "kodim01.png", "-o", tmp_path / "out",
                           "--engine", "ray", "--workers", "2", "--no-progress")  # fmt: skip
    assert code == 2 and "pip install 'fastdecoders[scale]'" in one_error_line(err)
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_cluster_that_cannot_be_joined_is_one_line(capsys, tmp_path, tiny, monkeypatch):
    # Ray's own failure to join (after its retries) is a long traceback; ray.init fails here at once instead
    ray = pytest.importorskip("ray", reason="needs the [scale] extra (ray[data])")

    def refuse(*_, **kwargs):
        raise ConnectionError(f"Failed to connect to Ray cluster at {kwargs['address']}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    make_shards(tmp_path / "a", [2])
    code, _, err = run_cli(capsys, "decode", tiny, tmp_path / "a", "-o", tmp_path / "out", "--engine", "ray",
                           "--address", "127.0.0.1:9", "--no-progress")  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "--address 127.0.0.1:9: could not join the Ray cluster" in line and "Failed to connect" in line
    assert not list((tmp_path / "out").glob("*.png"))
