"""The Ray Data engine on a local Ray (num_cpus=2, 300 MB object store) that this module starts once and always
shuts down: its files equal the embedded engine's bit for bit, and a decoder actor killed mid-job has its batch
retried (every item exactly once). Each test is bounded by SIGALRM."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from fastdecoders import build_decoder, save_decoder
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
