"""Patch-parallel decode (fastdecoders.parallel): 2-process gloo runs on 127.0.0.1 equal the single-process decode.

One spawn runs every equality scenario (the process start, ~5 s, is the main cost); two more check that a rank that
dies, or one that hangs, ends the others with one error line instead of a hang. Tolerances (fp32, max abs error on
RGB in [-1, 1]): 1e-5 for TAE decoders, 1e-4 for the diffusers AutoencoderKL / Wan tiny configs.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
import traceback
from pathlib import Path

import pytest
import torch

from fastdecoders.cli import main
from fastdecoders.errors import FastDecodersError
from fastdecoders.models import build_decoder
from fastdecoders.parallel import band_layers, choose_mode, parallel_decode, parallel_decode_frames, split_rows
from fastdecoders.parallel.comm import Bands

pytestmark = pytest.mark.usefixtures("one_thread")

# name: (decoder, mode, latent shape, tolerance); heights are uneven (11 -> 6 + 5) or give 1-row bands (2 -> 1 + 1)
SCENARIOS = {
    "tae-halo-uneven": ("taesdxl", "halo", (1, 4, 11, 9), 1e-5),
    "tae-layers-uneven": ("taesdxl", "layers", (1, 4, 11, 9), 1e-5),
    "tae-halo-1row": ("taesd", "halo", (1, 4, 2, 5), 1e-5),
    "taef2-auto": ("taef2", "auto", (1, 32, 7, 5), 1e-5),  # pooled GroupNorm: no receptive field, layers mode
    "kl-uneven": ("sdxl-vae", "layers", (1, 4, 9, 6), 1e-4),
    "kl-1row-batch2": ("sdxl-vae", "layers", (2, 4, 2, 3), 1e-4),
    "wan-video": ("wan2.1-vae", "layers", (1, 16, 2, 5, 4), 1e-4),
}
#: with 3 ranks the middle one exchanges rows with both neighbours at once
SCENARIOS_3 = {
    "tae-layers-3": ("taesd", "layers", (1, 4, 7, 5), 1e-5),  # 3 + 2 + 2 rows
    "kl-1row-3": ("sdxl-vae", "layers", (1, 4, 3, 4), 1e-4),  # 1 + 1 + 1 rows
    "wan-3": ("wan2.1-vae", "layers", (1, 16, 2, 4, 3), 1e-4),
}
TIMEOUT_S = 240  # a bound on each spawn; the runs take seconds


def _decoder(name: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the same random weights in every process
    return build_decoder(name, tiny=True).eval()


def _latents(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, job: str, pg_timeout_s: float) -> None:
    """One rank: joins a gloo group on 127.0.0.1, runs ``job``, saves what it got (or its error) to out_dir."""
    from datetime import timedelta

    import torch.distributed as dist

    from fastdecoders.parallel import init_process_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    result: dict = {}
    try:
        init_process_group("cpu", timeout_s=120)  # generous: a loaded machine may start the ranks seconds apart
        with torch.no_grad():
            if job in ("equality", "equality-3"):
                for key, (name, mode, shape, _) in (SCENARIOS if job == "equality" else SCENARIOS_3).items():
                    result[key] = parallel_decode(_decoder(name), _latents(shape), mode=mode, dst=0)
            if job == "equality":
                z = _latents((1, 4, 5, 4))
                result["all-ranks"] = parallel_decode(_decoder("taesd"), z, mode="layers", dst=None)
                result["frames"] = parallel_decode_frames(_decoder("taesd"), _latents((3, 4, 4, 4)), dst=0)
            elif job in ("die", "hang"):  # rank 1 stops in the middle of the decode, after some halo exchanges
                decoder = _decoder("taesd")  # layers mode: a halo exchange per conv
                convs = [m for m in decoder.modules() if isinstance(m, torch.nn.Conv2d) and m.padding[0] > 0]

                def stop(*_):
                    if job == "die":
                        os._exit(3)  # a crash: no Python cleanup, sockets closed by the OS
                    time.sleep(1.5 * pg_timeout_s)  # alive but silent: only the group's timeout ends rank 0's wait

                if rank == 1:
                    convs[3].register_forward_pre_hook(stop)
                group = dist.new_group(timeout=timedelta(seconds=pg_timeout_s))  # the short timeout under test
                dist.barrier(group)  # both ranks are up: from here only the failure can stop them
                parallel_decode(decoder, _latents((1, 4, 6, 4)), mode="layers", dst=0, group=group)
                result["finished"] = True
        dist.destroy_process_group()
    except Exception as error:  # saved for the test to inspect
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def _spawn(tmp: Path, job: str, world: int = 2, pg_timeout_s: float = 60.0) -> tuple[list[dict | None], float]:
    """Run ``_worker`` on ``world`` fresh processes; (each rank's saved result or None, seconds). Never hangs."""
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [context.Process(target=_worker, args=(r, world, port, str(tmp), job, pg_timeout_s)) for r in range(world)]
    started = time.monotonic()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(max(1.0, TIMEOUT_S - (time.monotonic() - started)))
    hung = [p.pid for p in procs if p.is_alive()]
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert not hung, f"processes {hung} still running after {TIMEOUT_S} s"
    files = [tmp / f"rank{r}.pt" for r in range(world)]
    return [torch.load(f, weights_only=False) if f.exists() else None for f in files], time.monotonic() - started


@pytest.fixture(scope="module")
def equality_run(tmp_path_factory) -> list[dict | None]:
    results, _ = _spawn(tmp_path_factory.mktemp("parallel"), "equality")
    for rank, result in enumerate(results):
        assert result is not None and "error" not in result, f"rank {rank}: {result and result.get('traceback')}"
    return results


@pytest.fixture(scope="module")
def equality_run_3(tmp_path_factory) -> list[dict | None]:
    results, _ = _spawn(tmp_path_factory.mktemp("parallel3"), "equality-3", world=3)
    for rank, result in enumerate(results):
        assert result is not None and "error" not in result, f"rank {rank}: {result and result.get('traceback')}"
    return results


@pytest.mark.parametrize("key", list(SCENARIOS_3))
def test_three_ranks_equal_single_process(equality_run_3, key):
    name, mode, shape, tolerance = SCENARIOS_3[key]
    with torch.no_grad():
        expected = _decoder(name)(_latents(shape))
    assert (equality_run_3[0][key] - expected).abs().max().item() <= tolerance
    assert equality_run_3[1][key] is None and equality_run_3[2][key] is None


@pytest.mark.parametrize("key", list(SCENARIOS))
def test_two_ranks_equal_single_process(equality_run, key):
    name, mode, shape, tolerance = SCENARIOS[key]
    with torch.no_grad():
        expected = _decoder(name)(_latents(shape))
    got = equality_run[0][key]
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= tolerance
    assert equality_run[1][key] is None  # dst=0: rank 1 never holds the whole image


def test_all_ranks_get_the_image_without_dst(equality_run):
    expected = _decoder("taesd")(_latents((1, 4, 5, 4))).detach()
    for rank in (0, 1):
        assert (equality_run[rank]["all-ranks"] - expected).abs().max().item() <= 1e-5


def test_frames_split_across_ranks(equality_run):
    expected = _decoder("taesd")(_latents((3, 4, 4, 4))).detach()  # 3 independent frames: 2 on rank 0, 1 on rank 1
    assert (equality_run[0]["frames"] - expected).abs().max().item() <= 1e-5
    assert equality_run[1]["frames"] is None


@pytest.mark.parametrize("job", ["die", "hang"])
def test_a_failed_rank_ends_the_others_with_one_error(tmp_path, job):
    pg_timeout_s = 5.0
    results, seconds = _spawn(tmp_path, job, pg_timeout_s=pg_timeout_s)
    survivor = results[0]
    assert survivor is not None and "error" in survivor
    assert survivor["error"].startswith("FastDecodersError: patch-parallel decode: rank 0 of 2 failed in a halo")
    assert "\n" not in survivor["error"]
    if job == "die":
        assert results[1] is None  # it crashed before saving anything


def test_split_rows_and_mode_errors():
    assert split_rows(11, 2) == (6, 5) and split_rows(2, 2) == (1, 1) and split_rows(7, 3) == (3, 2, 2)
    with pytest.raises(FastDecodersError, match="cannot give each of 3 ranks"):
        split_rows(2, 3)
    assert choose_mode(_decoder("taesd")) == "halo"
    assert choose_mode(_decoder("sdxl-vae")) == "layers"
    with pytest.raises(FastDecodersError, match="needs a bounded receptive field"):
        choose_mode(_decoder("sdxl-vae"), "halo")
    with pytest.raises(FastDecodersError, match="unknown module type AutoencoderDC"):
        choose_mode(_decoder("sana-vae"))


def test_band_layers_restores_the_decoder():
    decoder = _decoder("sdxl-vae")
    z = _latents((1, 4, 4, 4))
    with torch.no_grad():
        before = decoder(z)
        with band_layers(decoder, Bands((4,), 0)):  # one rank: the band forms reduce to the plain layers
            inside = decoder(z)
        after = decoder(z)
    assert (inside - before).abs().max().item() <= 1e-5
    assert torch.equal(before, after)
    assert not any("forward" in vars(m) for m in decoder.modules())


def test_cli_parallel_outside_torchrun_is_one_error(tmp_path, capsys, monkeypatch):
    from fastdecoders.io import write_latents

    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    write_latents(_latents((1, 4, 4, 4)), tmp_path / "z.safetensors")
    code = main(["decode", "taesd", str(tmp_path / "z.safetensors"), "-o", str(tmp_path / "x.png"), "--parallel"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "expected to run under torchrun" in err
    assert not (tmp_path / "x.png").exists()
