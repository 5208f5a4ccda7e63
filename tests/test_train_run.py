"""Training runs on the CPU at toy size (real TAESDXL teacher, Kodak photos at 96x64): outputs, the latent cache,
exact resume after a crash, 2-process DDP (gloo), the CLI's --json, phases with feature alignment, a student
initialised from a trained file, and a diffusers VAE as the teacher."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastdecoders.cli import main
from fastdecoders.train import checkpoint as ckpt
from fastdecoders.train.config import config_from_dict
from fastdecoders.train.data import Batches
from fastdecoders.train.loop import train
from fastdecoders.train.teachers import Teacher

REPO = Path(__file__).resolve().parents[1]
STEPS = 6


def small_config(shared: Path, cache: Path, **sections: dict) -> dict:
    """A toy run: tiny TAE student (widths 8), 3 training photos + 1 held out, 32-px crops; sections update it."""
    values = {
        "teacher": {"encoder": "taesdxl_encoder", "decoder": "taesdxl", "weights_dir": str(shared / "weights/taesd")},
        "student": {"name": "taesdxl", "tiny": True},
        "data": {
            "images": [str(shared / "data/images/kodak24")],
            "val_count": 1,
            "max_items": 3,
            "resize": 64,
            "crop": 32,
            "val_size": 64,
            "cache_dir": str(cache),
        },  # fmt: skip
        "loss": {"pixel": 1.0, "distill": 1.0},
        "train": {
            "steps": STEPS,
            "batch_size": 4,
            "lr": 3e-3,
            "warmup_steps": 2,
            "ema_decay": 0.9,
            "precision": "fp32",
            "device": "cpu",
        },  # fmt: skip
        "log": {
            "every": 2,
            "val_every": 3,
            "sample_every": 3,
            "checkpoint_every": 3,
            "samples": 2,
            "tensorboard": False,
        },  # fmt: skip
    }
    for name, updates in sections.items():
        values[name] = {**values.get(name, {}), **updates}
    return values


class EncodeCounter:
    """Wraps ``Teacher.encode`` to count calls; ``forbid`` makes any call an error (the cache must be reused)."""

    def __init__(self, forbid: bool = False):
        self.calls, self.forbid, self.original = 0, forbid, Teacher.encode

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> EncodeCounter:
        def encode(teacher: Teacher, pixels01: torch.Tensor) -> torch.Tensor:
            if self.forbid:
                raise AssertionError("the encoder ran although the latent cache was there")
            self.calls += 1
            return self.original(teacher, pixels01)

        monkeypatch.setattr(Teacher, "encode", encode)
        return self


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def reference(root, shared_dir):
    """One unbroken run (it builds the shared latent cache): (config dict, out folder, result, encoder calls)."""
    values = small_config(shared_dir, root / "cache", log={"tensorboard": True})
    counter = EncodeCounter()
    with pytest.MonkeyPatch.context() as m:
        counter.patch(m)
        result = train(config_from_dict(values), root / "reference")
    return values, root / "reference", result, counter.calls


def student_state(out: Path) -> dict[str, torch.Tensor]:
    _, path = ckpt.list_checkpoints(out)[-1]
    return ckpt.load_checkpoint(path)


def test_run_writes_model_card_logs_samples_and_encodes_each_item_once(reference):
    values, out, result, calls = reference
    from fastdecoders.weights import load_decoder

    # the encoder ran once per cached picture (training items and their flips, validation items) and never again,
    # although the run went through the 3 training items 8 times (6 steps of 4 crops)
    assert calls == 2 * result["data"]["train_items"] + result["data"]["val_items"] == 2 * 3 + 1
    assert result["steps"] == STEPS and STEPS * 4 > 2 * result["data"]["train_items"]
    shards = sorted(p.name for p in Path(result["cache"]["folder"]).glob("*.safetensors"))
    assert shards == ["train-00000.safetensors", "val-00000.safetensors"]
    for metrics in (result["val"], result["teacher_val"], result["init_val"]):
        assert math.isfinite(metrics["psnr"]) and 0 < metrics["ssim"] <= 1
    assert result["teacher_val"]["psnr"] > result["val"]["psnr"]  # 6 steps of a toy student vs the real TAESDXL

    model = load_decoder(out / "model.safetensors")
    assert model.arch == "tae" and model.latent_space_name == "sdxl"
    z = torch.randn(1, 4, 8, 8)
    assert model(z).shape == (1, 3, 64, 64)
    card = (out / "README.md").read_text()
    assert "taesdxl_encoder + taesdxl" in card and f"| steps | {STEPS} " in card and "kodak24" in card
    assert f"{result['val']['psnr']:.2f}" in card and f"{result['teacher_val']['psnr']:.2f}" in card
    assert json.loads((out / "result.json").read_text())["weights_sha256"] == result["weights_sha256"]

    rows = (out / "train_log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,grad_norm,pixel,distill,lr,images_per_s") and len(rows) == 1 + STEPS // 2
    assert [r.split(",")[0] for r in (out / "val_log.csv").read_text().splitlines()[1:]] == ["3", "6"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_0000003.png", "step_0000006.png"]
    assert any((out / "tensorboard").iterdir())
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [3, 6]


def test_crash_then_resume_gives_bit_identical_weights_without_running_the_encoder(reference, root, monkeypatch):
    values, ref_out, ref_result, _ = reference
    out = root / "crashed"
    original = Batches.batch

    def crash_at_step_4(self, step):
        if step == 4:
            raise RuntimeError("simulated crash")
        return original(self, step)

    EncodeCounter(forbid=True).patch(monkeypatch)  # the latent cache is reused
    monkeypatch.setattr(Batches, "batch", crash_at_step_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config_from_dict(values), out)
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [3]
    with pytest.raises(Exception, match="already holds a run"):
        train(config_from_dict(values), out)

    # a torn newest checkpoint (say, a disk that filled up) is skipped: the run continues from step 3
    (out / "checkpoints" / "step_0000004.pt").write_bytes(b"PK\x03\x04 truncated")
    monkeypatch.setattr(Batches, "batch", original)
    result = train(config_from_dict(values), out, resume=True)
    assert result["weights_sha256"] == ref_result["weights_sha256"]
    mine, theirs = student_state(out), student_state(ref_out)
    for key in ("student", "ema"):
        assert all(torch.equal(mine[key][k], theirs[key][k]) for k in theirs[key])
    exp_avg = lambda s: [v["exp_avg"] for v in s["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(exp_avg(mine), exp_avg(theirs), strict=True))
    assert mine["data"] == theirs["data"] and mine["scheduler"] == theirs["scheduler"]
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [3, 6]  # the torn leftover was dropped on resume
    # the logs read like an unbroken run's (rows after the checkpoint were written again, not twice)
    assert (out / "val_log.csv").read_text().splitlines()[0] == (ref_out / "val_log.csv").read_text().splitlines()[0]
    assert [r.split(",")[0] for r in (out / "train_log.csv").read_text().splitlines()[1:]] == ["2", "4", "6"]


KILLED_RUN = """
import json, os, signal, sys
import torch
from fastdecoders.train.config import config_from_dict
from fastdecoders.train.data import Batches
from fastdecoders.train.loop import train

torch.set_num_threads(1)
original = Batches.batch

def batch(self, step):
    if step == 5:  # no exception and no clean-up: the process is gone, as if the machine had died
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, step)

Batches.batch = batch
train(config_from_dict(json.loads(sys.argv[1])), sys.argv[2])
"""


def test_sigkill_mid_run_then_resume_gives_bit_identical_weights(reference, root):
    """A real kill (SIGKILL in a child process, between two checkpoints), then ``--resume``: the unbroken run's
    weights, bit for bit."""
    values, _, ref_result, _ = reference
    out = root / "killed"
    child = subprocess.run([sys.executable, "-c", KILLED_RUN, json.dumps(values), str(out)], capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [3]
    code = main(["train", str(out / "config.yaml"), "-o", str(out), "--resume", "--json"])
    assert code == 0
    assert json.loads((out / "result.json").read_text())["weights_sha256"] == ref_result["weights_sha256"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DEAD_RANK = """
import os, signal, sys
from fastdecoders.cli import main
from fastdecoders.train.data import Batches

original = Batches.batch

def batch(self, step):
    if step == 4 and os.environ["RANK"] == "1":  # process 1's machine is gone: no exception, no clean-up
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, step)

Batches.batch = batch
sys.exit(main(sys.argv[1:]))
"""


def test_a_rank_that_dies_is_one_error_line_on_the_others(reference, root):
    """Issue 9 section 3: when one DDP process dies, the others do not print a gloo traceback: one line says what
    happened and how to resume (from the step-3 checkpoint here), and the exit code is 2."""
    import yaml

    values = copy.deepcopy(reference[0])
    values["log"]["tensorboard"] = False
    config = root / "dead-rank.yaml"
    config.write_text(yaml.safe_dump(values))
    port, procs = _free_port(), []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-c", DEAD_RANK, "train", str(config), "-o",
                                       str(root / "dead-rank")], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    try:
        (_, err0), _ = (p.communicate(timeout=300) for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 2, err0[-3000:]
    assert "Traceback" not in err0, err0[-3000:]
    errors = [line for line in err0.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("fastdecoders train: error: distributed training: process 0 "
                                                     "of 2 lost contact with another process"), err0[-3000:]
    assert f"restart every process with --resume to continue from {root / 'dead-rank'}" in errors[0]
    assert errors[0].endswith("step_0000003.pt")


def _ddp_worker(rank: int, world: int, port: int, values: dict, out: str, results: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    result = train(config_from_dict(values), out)
    Path(results, f"rank{rank}.json").write_text(json.dumps(result))


def test_two_gloo_processes_stay_in_sync(reference, root):
    """DDP on 2 CPU processes: different data per rank, one set of weights (checked at every checkpoint by
    ``check_in_sync``, which raises on divergence), logs and checkpoints from rank 0 only; a feature-alignment phase
    first, then pixel + distill."""
    import torch.multiprocessing as mp

    values = copy.deepcopy(reference[0])
    values["train"]["steps"] = 4
    values["log"].update(checkpoint_every=2, val_every=100, sample_every=100, tensorboard=False)
    # phase 0 aligns features only (projections outside DDP, layers after the hooked one without a loss term)
    values["loss"].update(features=[{"student": "3", "teacher": "5"}],
                          phases=[{"until_step": 2, "pixel": 0.0, "distill": 0.0, "feature": 1.0}])  # fmt: skip
    out, results = root / "ddp", root / "ddp-results"
    results.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), values, str(out), str(results)), nprocs=2, join=True)
    r0, r1 = (json.loads((results / f"rank{i}.json").read_text()) for i in (0, 1))
    assert (r0["world_size"], r1["world_size"], r0["global_batch"]) == (2, 2, 8)
    assert r0["weights_sha256"] == r1["weights_sha256"]
    assert "model" in r0 and "model" not in r1  # only rank 0 writes the model, card and logs
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2, 4]
    state = student_state(out)
    assert tuple(state["projections"]["0.weight"].shape) == (64, 8)
    # the two ranks trained on different crops
    cfg = config_from_dict(values)
    from fastdecoders.latents import get_latent_space
    from fastdecoders.train.data import load_split

    split = load_split(Path(r0["cache"]["folder"]), "train")[0]
    batches = [Batches(split, get_latent_space("sdxl"), 32, 4, cfg.train.seed, True, rank, 2) for rank in (0, 1)]
    assert not torch.equal(batches[0].batch(0).pixels, batches[1].batch(0).pixels)


def test_cli_json_on_the_tiny_preset(reference, root, shared_dir, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    EncodeCounter(forbid=True).patch(monkeypatch)  # same data settings: the cache is reused
    data = reference[0]["data"]
    overrides = [
        f"teacher.weights_dir={shared_dir / 'weights/taesd'}", f"data.images=[{data['images'][0]}]",
        f"data.cache_dir={data['cache_dir']}", "data.val_count=1", "data.max_items=3", "data.resize=64",
        "data.crop=32", "data.val_size=64", "train.batch_size=4", "log.tensorboard=false", "log.samples=0",
    ]  # fmt: skip
    argv = ["train", "configs/tiny.yaml", "-o", str(root / "cli"), "--json", "--steps", "3"]
    code = main(argv + [a for o in overrides for a in ("--set", o)])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(result) == {"checkpoint", "steps", "seconds", "images_per_s", "val", "teacher_val"}
    assert Path(result["checkpoint"]).is_file() and result["steps"] == 3
    assert isinstance(result["seconds"], float) and result["images_per_s"] > 0
    for metrics in (result["val"], result["teacher_val"]):
        assert set(metrics) == {"psnr", "ssim"} and all(isinstance(v, float) for v in metrics.values())


def test_phases_with_feature_alignment_from_an_initialised_student(reference, root, monkeypatch):
    """Phase 0 aligns stage features (1x1 projections 8 -> 64 channels) only, phase 1 trains on pixels; the student
    starts from the reference run's file (``student.name: null``: its own architecture)."""
    values, ref_out, ref_result, _ = reference
    EncodeCounter(forbid=True).patch(monkeypatch)
    values = small_config(
        Path(values["teacher"]["weights_dir"]).parents[1], Path(values["data"]["cache_dir"]),
        student={"name": None, "tiny": False, "init": str(ref_out / "model.safetensors")},
        loss={"features": [{"student": "3", "teacher": "5"}, {"student": "6", "teacher": "10"}],
              "phases": [{"name": "align", "until_step": 2, "pixel": 0.0, "distill": 0.0, "feature": 1.0},
                         {"name": "output"}]},
        train={"steps": 4}, log={"checkpoint_every": 2, "val_every": 100, "sample_every": 100, "samples": 0},
    )  # fmt: skip
    out = root / "phases"
    result = train(config_from_dict(values), out)
    # the student started as the reference model's EMA weights: same validation score before training
    assert result["init_val"]["psnr"] == pytest.approx(ref_result["val"]["psnr"], abs=1e-4)
    rows = (out / "train_log.csv").read_text().splitlines()
    header = rows[0].split(",")
    step2, step4 = (dict(zip(header, r.split(","), strict=False)) for r in rows[1:])
    assert step2["phase"] == "0" and float(step2["feature"]) > 0 and step2.get("pixel", "") == ""
    assert step4["phase"] == "1" and float(step4["pixel"]) > 0 and step4["feature"] == ""
    state = student_state(out)
    assert tuple(state["projections"]["0.weight"].shape) == (64, 8)
    assert any("loss phase 1 (output)" in n for n in result["notes"])
    card = (out / "README.md").read_text()
    assert "| phase 0 (align) | steps 0–2: feature × 1 |" in card and "3 -> 5; 6 -> 10" in card


def test_diffusers_vae_teacher_from_a_local_folder(root, shared_dir):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32,
    )  # fmt: skip
    vae.save_pretrained(root / "tiny-vae")
    values = small_config(shared_dir, root / "vae-cache", train={"steps": 2},
                          log={"val_every": 100, "sample_every": 100, "samples": 0})  # fmt: skip
    values["teacher"] = {"vae": str(root / "tiny-vae"), "latents": "sdxl"}
    result = train(config_from_dict(values), root / "vae-run")
    assert result["teacher"].startswith("diffusers AutoencoderKL") and result["steps"] == 2
    assert math.isfinite(result["teacher_val"]["psnr"]) and math.isfinite(result["val"]["psnr"])


def test_video_student_on_real_clips(root, shared_dir):
    """A temporal TAE (tiny) on 3-frame clips of real footage: clip caching, frame-wise teacher, temporal term."""
    values = small_config(shared_dir, root / "video-cache", train={"steps": 2, "batch_size": 2},
                          log={"val_every": 100, "sample_every": 100, "samples": 1})  # fmt: skip
    values["teacher"] = {"encoder": "taesd_encoder", "decoder": "taesd", "latents": "svd",
                         "weights_dir": str(shared_dir / "weights/taesd")}  # fmt: skip
    values["student"] = {"name": "tae-temporal-svd", "tiny": True}
    values["data"] = {"videos": [str(shared_dir / "data/videos/tokenflow")], "val_count": 1, "frames": 3,
                      "clips_per_video": 1, "resize": 64, "crop": 32, "val_size": 64, "flips": False,
                      "cache_dir": str(root / "video-cache")}  # fmt: skip
    values["loss"] = {"pixel": 1.0, "distill": 1.0, "temporal": 0.5}
    result = train(config_from_dict(values), root / "video-run")
    assert result["student"]["arch"] == "tae-temporal" and result["latent_space"] == "svd"
    assert result["data"]["train_items"] == 1 and result["data"]["val_items"] == 1
    header = (root / "video-run" / "train_log.csv").read_text().splitlines()[0]
    assert "temporal" in header.split(",")
    assert math.isfinite(result["val"]["psnr"]) and math.isfinite(result["teacher_val"]["psnr"])
    assert (root / "video-run" / "samples" / "step_0000002.png").is_file()
