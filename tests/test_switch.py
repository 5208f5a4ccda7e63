"""The dynamic switch (fastdecoders.switching): routing, exactness per path, calibration, files, pipeline, video.

Tiny random decoders (registry tiny configs), CPU, one thread. Outputs are compared with ``torch.equal`` (bit for
bit) against the decoder that an item was routed to, run on the sub-batch routed to it; video against whole-run
decodes within 1e-5 (the stream/whole-clip tolerance of fastdecoders.tiling.stream_decode).
"""

from __future__ import annotations

import math

import pytest
import torch

import fastdecoders
from fastdecoders.errors import FastDecodersError
from fastdecoders.models import build_decoder
from fastdecoders.models.fileformat import save_decoder
from fastdecoders.switching import PIPELINE_VAE, Gate, GateConfig, SwitchConfig, SwitchDecoder
from fastdecoders.switching.calibrate import threshold_for_budget, threshold_for_floor, within_floor
from fastdecoders.switching.core import light_head
from fastdecoders.switching.fit import collect, fit_switch, spearman, train_gate

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name: str, seed: int):
    torch.manual_seed(seed)
    return build_decoder(name, tiny=True).eval()


@pytest.fixture(scope="module")
def pair():
    return tiny("taef2", 1), tiny("taef2", 2)  # same (flux2) latent space, different weights


def latents(n: int, seed: int = 0, size: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, 1, 1, 1, generator=g) * 2 + 0.1  # items differ in scale: a learnable "difficulty"
    return torch.randn(n, 32, size, size, generator=g) * scale


def make_switch(light, heavy, kind="latent", threshold=0.0) -> SwitchDecoder:
    """A switch with a random (untrained) gate: routing tests need a gate, not a good one."""
    from fastdecoders.switching.core import default_feature_point

    torch.manual_seed(0)
    in_ch = 32 if kind == "latent" else light.config.widths[0]
    gate = Gate(GateConfig(in_ch, kind, 8, 8)).eval()
    point = default_feature_point(light) if kind == "features" else None
    cfg = SwitchConfig("light.safetensors", "heavy.safetensors", kind, threshold, point, in_ch, 8, 8)
    return SwitchDecoder(cfg, light, heavy, gate).eval()


class Calls:
    """Counts forward calls of a module."""

    def __init__(self, module):
        self.n = 0
        module.register_forward_pre_hook(lambda *a: setattr(self, "n", self.n + 1))


@pytest.mark.parametrize("kind", ["latent", "features"])
def test_routing_follows_gate_exact_per_path_and_order(pair, kind):
    light, heavy = pair
    z = latents(9)
    sw = make_switch(light, heavy, kind)
    scores = sw.route(z)[0]
    sw.config = SwitchConfig(**{**vars(sw.config), "threshold": float(scores.median())})  # a mixed batch
    out = sw(z)
    routes = sw.last_routes
    assert torch.equal(routes, scores > float(scores.median()))
    assert 0 < int(routes.sum()) < 9
    assert out.shape == (9, 3, 64, 64)
    assert torch.equal(out[routes], heavy(z[routes]))  # heavy items: heavy's own output, bit for bit
    assert torch.equal(out[~routes], light(z[~routes]))  # light items: light's own output, in batch order


@pytest.mark.parametrize("threshold", [math.inf, -math.inf])
@pytest.mark.parametrize("kind", ["latent", "features"])
def test_a_batch_routed_one_way_never_runs_the_other(kind, threshold):
    light, heavy = tiny("taef2", 1), tiny("taef2", 2)
    calls_l, calls_h = Calls(light), Calls(heavy)
    sw = make_switch(light, heavy, kind, threshold)
    z = latents(4)
    out = sw(z)
    if threshold == math.inf:  # all light
        assert calls_h.n == 0 and sw.last_routes.sum() == 0
        assert torch.equal(out, light(z))
    else:
        assert sw.last_routes.all() and torch.equal(out, heavy(z))
        assert calls_l.n == 0  # (the features gate runs the light decoder's first layers, never its forward)


def test_empty_batch_nan_and_latent_space_errors(pair):
    light, heavy = pair
    sw = make_switch(light, heavy)
    assert sw(torch.zeros(0, 32, 8, 8)).shape == (0, 3, 64, 64)
    bad = latents(2)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(FastDecodersError, match="NaN"):
        sw(bad)
    with pytest.raises(FastDecodersError, match="same latent space.*flux2.*sdxl"):
        make_switch(light, tiny("taesdxl", 3))


def test_budget_calibration_hits_target_on_held_back_data(pair):
    light, _ = pair
    gate = Gate(GateConfig(32, "latent", 8, 8)).eval()
    held, fresh = latents(200, seed=1), latents(400, seed=2)
    with torch.no_grad():
        thr = threshold_for_budget(gate(held), 0.2)
        on_held = float((gate(held) > thr).double().mean())
        on_fresh = float((gate(fresh) > thr).double().mean())
    assert 0.2 - 1 / 200 <= on_held <= 0.2  # at most the budget, at most one item short, on the data it was set on
    assert abs(on_fresh - 0.2) < 0.07  # unseen items of the same distribution: about the budget (binomial sd 0.02)
    assert threshold_for_budget(torch.tensor([1.0, 2.0]), 0.0) == 2.0
    assert threshold_for_budget(torch.tensor([1.0, 2.0]), 1.0) == -math.inf
    with pytest.raises(FastDecodersError, match="budget"):
        threshold_for_budget(torch.tensor([1.0]), 1.5)


def test_floor_calibration():
    scores = torch.tensor([4.0, 3.0, 2.0, 1.0])
    light_psnr, heavy_psnr = torch.tensor([20.0, 25.0, 29.5, 30.0]), torch.tensor([30.0] * 4)
    thr = threshold_for_floor(scores, light_psnr, heavy_psnr, 0.75, 1.0)  # items 2, 3 ok alone: route item 0 heavy
    assert thr == 3.0 and within_floor(scores > thr, light_psnr, heavy_psnr, 1.0) == 0.75


def test_gate_learns_the_deficit_without_labels(pair):
    light, heavy = pair
    z = latents(48, seed=3)
    data = collect(light, heavy, z, show=False)  # targets: light vs heavy, no photo needed
    gate = train_gate(z[:36], data.deficit[:36], "latent", epochs=150, width=8, hidden=8, show=False)
    assert spearman(gate(z[36:]), data.deficit[36:]) > 0.6  # unseen items ranked by their true deficit


def test_fit_save_load_round_trip_and_missing_decoders(pair, tmp_path):
    light, heavy = pair
    lp, hp = save_decoder(light, tmp_path / "light.safetensors"), save_decoder(heavy, tmp_path / "heavy.safetensors")
    sw, report = fit_switch(light, heavy, latents(20, seed=4), light_name=lp, heavy_name=hp, kind="features",
                            budget=0.25, epochs=20, show=False, width=8, hidden=8)  # fmt: skip
    assert report["items_held_back"] == 4 and report["held_back_heavy_fraction"] <= 0.25
    assert report["flops"]["gate_over_light"] < 0.02
    path = sw.save_pretrained(str(tmp_path / "sw.safetensors"), extra={"report": report})
    loaded = fastdecoders.load_decoder(path)
    assert isinstance(loaded, SwitchDecoder) and loaded.config == sw.config.__class__(
        **{**vars(sw.config), "light": "light.safetensors", "heavy": "heavy.safetensors"})  # relative to the file
    z = latents(6, seed=5)
    assert torch.equal(loaded(z), sw(z)) and torch.equal(loaded.last_routes, sw.last_routes)
    (tmp_path / "light.safetensors").unlink()
    (tmp_path / "heavy.safetensors").unlink()
    with pytest.raises(FastDecodersError, match="light decoder 'light.safetensors'.*heavy decoder 'heavy.safetensors'"):
        fastdecoders.load_decoder(path)
    with pytest.raises(FastDecodersError, match="neither a registered decoder nor a file"):  # never an unloadable file
        sw.save_pretrained(str(tmp_path / "again.safetensors"))


def test_public_switch_with_budget(pair):
    light, heavy = pair
    gate = Gate(GateConfig(32, "latent", 8, 8)).eval()
    sw = fastdecoders.switch(light, heavy, gate, budget=0.25, calibration=latents(40, seed=6))
    sw(latents(40, seed=6))
    assert int(sw.last_routes.sum()) == 10
    with pytest.raises(FastDecodersError, match="exactly one"):
        fastdecoders.switch(light, heavy, gate)


def test_pipeline_adapter_heavy_is_the_pipelines_vae(tmp_path):
    from fastdecoders.testing.tiny_pipelines import tiny_pipeline

    pipe = tiny_pipeline("sd", scaling_factor=0.2)[0]
    light = tiny("taesd", 7)
    light_file = save_decoder(light, tmp_path / "light.safetensors")
    sw = SwitchDecoder(SwitchConfig(light_file, PIPELINE_VAE, "latent", 0.0, None, 4, 8, 8), light, None,
                       Gate(GateConfig(4, "latent", 8, 8)).eval())  # fmt: skip
    with fastdecoders.use(pipe, sw.save_pretrained(str(tmp_path / "sw.safetensors"))) as swap:  # from a file too
        assert pipe.vae.fast_decoder.heavy.vae is swap.pipe.vae.original_vae
    raw = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    with pytest.raises(FastDecodersError, match="pipeline:vae"):
        sw.config = SwitchConfig(**{**vars(sw.config), "threshold": -math.inf})
        sw(raw)
    with fastdecoders.use(pipe, sw):
        scores = sw.route(pipe.vae._space.to_diffusion(raw))[0]
        sw.config = SwitchConfig(**{**vars(sw.config), "threshold": float(scores.median())})
        out = pipe.vae.decode(raw).sample
        routes = sw.last_routes
        assert 0 < int(routes.sum()) < 6
        own = pipe.vae.original_vae.decode(raw[routes]).sample
        assert torch.allclose(out[routes], own, atol=1e-5)  # the pipeline's own VAE (raw -> diffusion -> raw)
        z = pipe.vae._space.to_diffusion(raw[~routes])
        assert torch.equal(out[~routes], light(z))


def test_video_chunk_routing_matches_per_chunk_reference():
    light, heavy = tiny("taew2_1", 1), tiny("taew2_1", 2)
    torch.manual_seed(0)
    gate = Gate(GateConfig(16, "latent", 8, 8)).eval()
    z = torch.randn(1, 16, 7, 4, 4, generator=torch.Generator().manual_seed(9))
    z[:, :, 2:5] *= 3  # some chunks look different to the gate
    from fastdecoders.switching.video import chunk_scores

    chunk, context = 2, 1
    with torch.no_grad():
        scores = chunk_scores(gate, z, chunk)[0]
    thr = float(scores.median())
    cfg = SwitchConfig("l", "h", "latent", thr, None, 16, 8, 8, chunk=chunk, context=context)
    sw = SwitchDecoder(cfg, light, heavy, gate).eval()
    out = sw(z)
    routes = sw.last_routes[0]
    assert out.shape == light(z).shape and 0 < int(routes.sum()) < len(routes)
    # reference: each run of consecutive chunks routed to one decoder = that decoder's whole-clip decode of the run
    # with `context` latent frames before it, keeping the run's own pixel frames
    k, spans = 4, [(a, min(a + chunk, 7)) for a in range(0, 7, chunk)]
    pieces, j = [], 0
    while j < len(spans):
        r = j
        while r + 1 < len(spans) and routes[r + 1] == routes[j]:
            r += 1
        a, b = spans[j][0], spans[r][1]
        dec = heavy if routes[j] else light
        with torch.no_grad():
            y = dec(z[:, :, max(0, a - context) : b])
        n = k * (b - a) if a > 0 else 1 + k * (b - a - 1)
        pieces.append(y[:, :, -n:])
        j = r + 1
    assert torch.allclose(out, torch.cat(pieces, 2), atol=1e-5)
    whole = SwitchDecoder(SwitchConfig("l", "h", "latent", math.inf, None, 16, 8, 8, chunk=chunk), light, heavy,
                          gate).eval()  # fmt: skip
    assert torch.allclose(whole(z), light(z), atol=1e-5)  # all light: the light decoder's own streaming decode
    assert whole(z[:0]).shape == (0, *light(z).shape[1:])  # an empty batch of clips


def test_features_gate_needs_a_tae_light(pair):
    light, heavy = tiny("taew2_1", 1), tiny("taew2_1", 2)
    with pytest.raises(FastDecodersError, match="features"):
        SwitchDecoder(SwitchConfig("l", "h", "features", 0.0, "0", 16, 8, 8), light, heavy,
                      Gate(GateConfig(16, "features", 8, 8)))  # fmt: skip
    assert light_head(pair[0], latents(1), "5").shape[1] == pair[0].config.widths[0]


def test_cli_fit_json_then_every_loader_takes_the_file(capsys, tmp_path, taesd_weights_dir, kodak_dir):
    import json

    from tests.cli_helpers import one_error_line, run_cli

    light = save_decoder(tiny("taef2", 4), tmp_path / "light.safetensors")  # a random light, the real TAEF2 heavy
    out = tmp_path / "sw.safetensors"
    code, stdout, err = run_cli(capsys, "switch", "fit", light, "taef2", "--images", kodak_dir, "--limit", 6,
                                "--size", 32, "--budget", 0.2, "--epochs", 10, "--weights-dir", taesd_weights_dir,
                                "-o", out, "--json")  # fmt: skip
    assert code == 0, err
    report = json.loads(stdout)
    assert report["items_held_back"] == 1 and report["held_back_heavy_fraction"] == 0.0 and out.is_file()
    assert set(report["held_back_psnr"]) == {"light", "heavy", "switch", "gap_recovered"}
    sw = fastdecoders.load_decoder(out, weights_dir=taesd_weights_dir)  # heavy by name: found on the weights path
    assert isinstance(sw, SwitchDecoder) and sw.config.heavy == "taef2" and sw.config.light == "light.safetensors"
    code, _, err = run_cli(capsys, "switch", "fit", light, "taesdxl", "--images", kodak_dir, "--budget", 0.2,
                           "--weights-dir", taesd_weights_dir, "-o", tmp_path / "x.safetensors")  # fmt: skip
    assert code == 2 and "same latent space" in one_error_line(err) and not (tmp_path / "x.safetensors").exists()
    code, _, err = run_cli(capsys, "switch", "fit", light, "taef2", "--images", kodak_dir, "--floor", "most",
                           "-o", tmp_path / "y.safetensors")  # fmt: skip
    assert code == 2 and "FRACTION@DB" in one_error_line(err)


def test_decode_and_bench_verbs_take_a_switch_file(capsys, tmp_path, pair):
    from fastdecoders.io import write_latents
    from tests.cli_helpers import run_cli

    light, heavy = pair
    lp, hp = save_decoder(light, tmp_path / "light.safetensors"), save_decoder(heavy, tmp_path / "heavy.safetensors")
    sw = make_switch(light, heavy)
    sw.config = SwitchConfig(**{**vars(sw.config), "light": lp, "heavy": hp})
    path = sw.save_pretrained(str(tmp_path / "sw.safetensors"))
    z = latents(3, seed=10)
    write_latents(z, tmp_path / "z.safetensors")
    code, _, err = run_cli(capsys, "decode", path, tmp_path / "z.safetensors", "-o", tmp_path / "out", "--tile", "off")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    code, out, err = run_cli(capsys, "bench", path, "--sizes", "64", "--runs", "1", "--threads", "1", "--no-peak",
                             "--plot", tmp_path / "bench.png", "--json")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "bench.png").is_file() and '"decoder"' in out


def test_gain_score_needs_photos_and_ships_in_the_file(pair, tmp_path):
    light, heavy = pair
    lp, hp = save_decoder(light, tmp_path / "light.safetensors"), save_decoder(heavy, tmp_path / "heavy.safetensors")
    z = latents(10, seed=11)
    with pytest.raises(FastDecodersError, match="'gain' score needs the photos"):
        fit_switch(light, heavy, z, light_name=lp, heavy_name=hp, budget=0.2, score="gain", show=False)
    photos = torch.rand(10, 3, 64, 64, generator=torch.Generator().manual_seed(12))
    sw, report = fit_switch(light, heavy, z, photos, light_name=lp, heavy_name=hp, budget=0.5, score="gain",
                            epochs=10, show=False, width=8, hidden=8)  # fmt: skip
    assert report["gate_score"] == "gain" and sw.config.score == "gain"
    assert report["held_back_heavy_fraction"] <= 0.5
    loaded = fastdecoders.load_decoder(sw.save_pretrained(str(tmp_path / "sw.safetensors")))
    assert (loaded.config.score, loaded.config.threshold) == ("gain", sw.config.threshold)  # names: relative paths
    assert torch.equal(loaded(z), sw(z))
