"""The Ray Data engine on a local Ray (num_cpus=2, 300 MB object store) that this module starts once and always
shuts down: its files equal the embedded engine's bit for bit, and a decoder actor killed mid-job has its batch
retried (every item exactly once); encode jobs likewise (same shards bit for bit, a corrupt photo recorded, a killed
encoder actor's batch retried). Each test is bounded by SIGALRM."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from fastdecoders import build_decoder, save_decoder
from fastdecoders.batch.encode import EncodeJob, run_encode_job
from fastdecoders.batch.job import DecodeJob, run_decode_job
from fastdecoders.batch.worker import DecoderArgs
from fastdecoders.shards import Shard, write_shard

ray = pytest.importorskip("ray", reason="needs the [scale] extra (ray[data])")
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_thread")]
LIMIT_S = 240  # per test, Ray start-up included (a loaded 2-core machine)


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False, log_to_driver=False,
             logging_level="warning")  # fmt: skip
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def bounded():
    def fail(*_):
        raise TimeoutError(f"Ray test ran past {LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory) -> tuple[Path, Path, dict[str, bytes]]:
    """(decoder file, shards folder with 40 latents in 3 shards, the embedded engine's files)."""
    root = tmp_path_factory.mktemp("ray")
    torch.manual_seed(0)
    decoder = save_decoder(build_decoder("taesdxl", tiny=True), root / "tiny.safetensors")
    g = torch.Generator().manual_seed(1)
    for k, n in enumerate((16, 16, 8)):
        write_shard(root / "in" / f"shard-{k}.safetensors",
                    Shard(torch.randn(n, 4, 8, 8, generator=g), [f"s{k}-{i:02d}" for i in range(n)]))  # fmt: skip
    summary = run_decode_job(job(decoder, root / "in", root / "embedded"))
    assert summary["written"] == 40
    return decoder, root / "in", files(root / "embedded")


def job(decoder: Path, inputs: Path, out: Path, **kwargs) -> DecodeJob:
    return DecodeJob((str(inputs),), str(out), DecoderArgs(str(decoder)), batch_size=4, progress=False, **kwargs)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def manifest_ids(out: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_ray_files_equal_the_embedded_engine_files(ray_session, job_inputs, tmp_path):
    decoder, inputs, expected = job_inputs
    summary = run_decode_job(job(decoder, inputs, tmp_path / "ray", engine="ray", workers=2))  # all 2 CPUs
    assert (summary["engine"], summary["workers"], summary["written"], summary["failed"]) == ("ray", 2, 40, 0)
    assert summary["exit_code"] == 0 and summary["first_item_s"] is not None
    got = files(tmp_path / "ray")
    assert len(got) == 40 and got == expected
    assert sorted(manifest_ids(tmp_path / "ray")) == sorted(n.removesuffix(".png") for n in expected)
    assert ray.is_initialized()  # the job used the running Ray and left it running


def test_a_killed_decoder_actor_has_its_batch_retried(ray_session, job_inputs, tmp_path):
    decoder, inputs, expected = job_inputs
    marker = tmp_path / "killed"
    summary = run_decode_job(job(decoder, inputs, tmp_path / "ray", engine="ray", workers=1,
                                 fault_exit_once=str(marker)))  # fmt: skip
    assert marker.is_file()  # an actor did exit mid-job (os._exit in its second batch)
    assert (summary["written"], summary["failed"], summary["exit_code"]) == (40, 0, 0)
    ids = manifest_ids(tmp_path / "ray")
    assert len(ids) == len(set(ids)) == 40
    assert files(tmp_path / "ray") == expected
    assert not list((tmp_path / "ray").glob(".*"))


def test_ray_encode_writes_the_embedded_shards_records_a_corrupt_photo_and_retries_a_killed_actor(
    ray_session, tmp_path, taesd_weights_dir, kodak_dir
):
    import shutil

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(1, 6):
        shutil.copy(kodak_dir / f"kodim0{i}.png", photos)
    (photos / "kodim03.png").write_bytes(b"\x89PNG broken")  # a corrupt photo in the middle of a batch
    common = {"inputs": (str(photos),), "encoder": "taesdxl_encoder", "weights_dir": str(taesd_weights_dir),
              "size": 64, "shard_items": 3, "batch_size": 2, "pixels": True, "progress": False}  # fmt: skip
    embedded = run_encode_job(EncodeJob(out=str(tmp_path / "embedded"), **common))
    marker = tmp_path / "killed"
    ray_job = EncodeJob(out=str(tmp_path / "ray"), engine="ray", workers=2, fault_exit_once=str(marker), **common)
    summary = run_encode_job(ray_job)
    assert marker.is_file()  # an encoder actor did exit mid-job (os._exit in its second batch)
    for result in (embedded, summary):
        assert (result["written"], result["failed"], result["shards"], result["exit_code"]) == (4, 1, 2, 1)
    assert (summary["engine"], summary["workers"]) == ("ray", 2)
    shards = sorted(p.name for p in (tmp_path / "embedded").glob("shard-*.safetensors"))
    assert shards == ["shard-00000.safetensors", "shard-00001.safetensors"]
    for name in shards:  # the same encoder calls: the same latents, pixels and header, byte for byte
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "embedded" / name).read_bytes()
    rows = [json.loads(line) for line in (tmp_path / "ray" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [f"kodim0{i}" for i in range(1, 6)]  # each item once
    broken = next(r for r in rows if r["id"] == "kodim03")
    assert broken["status"] == "failed" and "kodim03.png" in broken["error"] and broken.get("shard") is None
    assert not list((tmp_path / "ray").glob(".*"))
    assert run_encode_job(ray_job)["skipped"] == 5  # resumed: both shards are there, nothing is redone
