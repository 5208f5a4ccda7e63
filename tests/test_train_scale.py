"""Training at scale, simulated on one machine: ``torchrun --nnodes 2`` (2 nodes x 1 process, c10d rendezvous on
127.0.0.1) training from the latents shards ``fastdecoders encode`` writes, each rank reading only its own shards;
then one rank killed (SIGKILL) mid-run and the job resumed from the last checkpoint, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fastdecoders.cli import main
from fastdecoders.errors import FastDecodersError
from fastdecoders.train import checkpoint as ckpt
from fastdecoders.train.config import DataConfig
from fastdecoders.train.data import rank_shards

TIMEOUT_S = 300  # a bound on each simulated job; they take seconds

# rank 1's machine dies at step 5 (after the step-3 checkpoint): no exception, no clean-up
KILL_RANK_1 = """
import os, signal, sys
from fastdecoders.cli import main
from fastdecoders.train.data import Batches

original = Batches.batch

def batch(self, step):
    if step == 5 and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, step)

Batches.batch = batch
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(cwd: Path, job: str, argv: list[str]) -> list[subprocess.CompletedProcess]:
    """Two torchrun agents ("nodes") of one process each, meeting at a c10d rendezvous on 127.0.0.1."""
    port = _free_port()
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
              "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", job,
              "--local-addr", "127.0.0.1", "--max-restarts", "0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(launch + argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    done = []
    try:
        for node in nodes:
            out, err = node.communicate(timeout=TIMEOUT_S)
            done.append(subprocess.CompletedProcess(node.args, node.returncode, out, err))
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    return done


@pytest.fixture(scope="module")
def job(tmp_path_factory, shared_dir) -> Path:
    """A folder with 3 shards of 2 Kodak photos (64 px) from ``encode --pixels`` and a toy training config."""
    root = tmp_path_factory.mktemp("scale")
    weights = shared_dir / "weights" / "taesd"
    photos = str(shared_dir / "data" / "images" / "kodak24" / "kodim0[1-6].png")
    code = main(["encode", "taesdxl_encoder", photos, "-o", str(root / "shards"), "--size", "64", "--shard-items", "2",
                 "--pixels", "--weights-dir", str(weights), "--json", "--no-progress"])  # fmt: skip
    assert code == 0
    config = {
        "teacher": {"encoder": "taesdxl_encoder", "decoder": "taesdxl", "weights_dir": str(weights)},
        "student": {"name": "taesdxl", "tiny": True},
        "data": {"shards": ["shards"], "crop": 32, "val_size": 64},  # 2 training shards (one per rank) + 1 held out
        "loss": {"pixel": 1.0},  # encode's shards hold no teacher outputs: no distill term
        "train": {"steps": 6, "batch_size": 2, "lr": 3e-3, "warmup_steps": 2, "precision": "fp32", "device": "cpu"},
        "log": {"every": 2, "val_every": 3, "sample_every": 100, "checkpoint_every": 3, "samples": 2,
                "tensorboard": False},
    }  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture(scope="module")
def unbroken(job) -> dict:
    runs = _two_nodes(job, "unbroken", ["-m", "fastdecoders", "train", "config.yaml", "-o", "unbroken", "--json"])
    for rank, run in enumerate(runs):
        assert run.returncode == 0, f"node {rank}: {run.stderr[-3000:]}"
    return json.loads((job / "unbroken" / "result.json").read_text())


def test_two_nodes_train_from_encode_shards_each_rank_its_own(job, unbroken):
    assert (unbroken["world_size"], unbroken["global_batch"], unbroken["steps"]) == (2, 4, 6)
    # process 0 read only shard 0 (its share); shard 1 is process 1's; shard 2 is held out for validation
    assert unbroken["cache"]["folder"].endswith("shard-00000.safetensors")
    assert (unbroken["data"]["train_items"], unbroken["data"]["val_items"]) == (2, 2)
    assert [s for s, _ in ckpt.list_checkpoints(job / "unbroken")] == [3, 6]


def test_one_rank_dies_then_resume_gives_the_unbroken_weights(job, unbroken):
    (job / "kill_rank_1.py").write_text(KILL_RANK_1)
    killed = _two_nodes(job, "killed", ["kill_rank_1.py", "train", "config.yaml", "-o", "resumed", "--json"])
    # the job fails as a whole (no hang): both nodes exit non-zero, and torchrun names the killed rank
    assert all(run.returncode != 0 for run in killed)
    assert any(f"exitcode  : -{int(signal.SIGKILL)}" in run.stderr for run in killed)
    assert [s for s, _ in ckpt.list_checkpoints(job / "resumed")] == [3]
    argv = ["-m", "fastdecoders", "train", "config.yaml", "-o", "resumed", "--resume", "--json"]
    for rank, run in enumerate(_two_nodes(job, "resume", argv)):
        assert run.returncode == 0, f"node {rank}: {run.stderr[-3000:]}"
    resumed = json.loads((job / "resumed" / "result.json").read_text())
    assert resumed["weights_sha256"] == unbroken["weights_sha256"]


def test_rank_shards_split_and_errors(tmp_path):
    import torch

    from fastdecoders.shards import Shard, write_shard

    for i in range(5):
        write_shard(tmp_path / f"shard-{i:05d}.safetensors", Shard(torch.zeros(1, 4, 2, 2), ids=[f"x{i}"]))
    cfg = DataConfig(shards=[str(tmp_path)])
    names = lambda paths: [p.name[6:11] for p in paths]  # noqa: E731
    assert [names(rank_shards(cfg, r, 2)[0]) for r in (0, 1)] == [["00000", "00002"], ["00001", "00003"]]
    assert names(rank_shards(cfg, 0, 2)[1]) == ["00004"]
    explicit = DataConfig(shards=[str(tmp_path)], val_shards=[str(tmp_path / "shard-00000.safetensors")])
    assert names(rank_shards(explicit, 1, 2)[0]) == ["00002", "00004"]
    with pytest.raises(FastDecodersError, match="5 processes need at least 5 training shards, got 4"):
        rank_shards(cfg, 0, 5)
