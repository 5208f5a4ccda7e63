"""The light decoder and the switch trained in this repository, as registered names (weights/switch-taef2/).

``taef2-pruned50`` is the distilled half-width TAEF2 (an architecture with a shipped file); ``switch-taef2`` is a
composite (a switch file naming ``taef2-pruned50`` and ``taef2``). Loading a name must give exactly what loading
its file gives (state and outputs compared with ``torch.equal``), and every verb must take the names.
"""

from __future__ import annotations

import json

import pytest
import torch

import fastdecoders
from fastdecoders.errors import FastDecodersError
from fastdecoders.registry import get_spec, list_decoders
from fastdecoders.switching import SwitchDecoder
from fastdecoders.weights import SHIPPED_DIR, find_shipped
from tests.cli_helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

STUDENT, SWITCH = "taef2-pruned50", "switch-taef2"


def latents(n: int = 3, side: int = 8) -> torch.Tensor:
    return torch.randn(n, 32, side, side, generator=torch.Generator().manual_seed(0))


def test_shipped_files_are_small_and_in_the_repository():
    for name in (STUDENT, SWITCH):
        path = find_shipped(get_spec(name).file)
        assert path is not None and path.parent == SHIPPED_DIR / "switch-taef2"
        assert path.stat().st_size < 2 * 1024 * 1024  # no tracked file over 2 MB


def test_student_by_name_equals_its_file():
    named = fastdecoders.load_decoder(STUDENT)
    direct = fastdecoders.load_decoder(SHIPPED_DIR / get_spec(STUDENT).file)
    assert named.registry_name == STUDENT and named.latent_space_name == "flux2"
    assert named.config == direct.config == get_spec(STUDENT).config
    a, b = named.state_dict(), direct.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    z = latents()
    assert torch.equal(named(z), direct(z))


def test_switch_by_name_equals_its_file(taesd_weights_dir):
    named = fastdecoders.load_decoder(SWITCH, weights_dir=taesd_weights_dir)
    direct = fastdecoders.load_decoder(SHIPPED_DIR / get_spec(SWITCH).file, weights_dir=taesd_weights_dir)
    assert isinstance(named, SwitchDecoder) and named.registry_name == SWITCH
    assert named.config == direct.config
    assert (named.config.light, named.config.heavy) == (STUDENT, "taef2")  # the file names both decoders
    assert named.light.registry_name == STUDENT
    z = latents(6) * torch.linspace(0.2, 3, 6)[:, None, None, None]  # items of different scale: mixed routes
    out = named(z)
    assert torch.equal(out, direct(z)) and torch.equal(named.last_routes, direct.last_routes)
    routes = named.last_routes
    if routes.any():
        assert torch.equal(out[routes], named.heavy(z[routes]))
    if (~routes).any():  # light items: the light decoder continues from the features the gate read
        assert torch.allclose(out[~routes], named.light(z[~routes]), atol=1e-5)


def test_composites_are_loaded_not_built(tmp_path, monkeypatch):
    assert STUDENT in list_decoders() and SWITCH not in list_decoders()  # build_decoder / tiny configs: no switch
    assert SWITCH in list_decoders(composites=True) and get_spec(SWITCH).composite
    with pytest.raises(FastDecodersError, match="not an architecture to initialise at random"):
        fastdecoders.load_decoder(SWITCH, pretrained=False)
    import fastdecoders.weights as weights

    monkeypatch.setattr(weights, "SHIPPED_DIR", tmp_path / "nowhere")
    with pytest.raises(FastDecodersError, match=f"weights for {STUDENT} not found; looked for .*nowhere"):
        fastdecoders.load_decoder(STUDENT, weights_dir=tmp_path)


def test_every_verb_takes_the_names(capsys, tmp_path, taesd_weights_dir, kodak_dir, monkeypatch):
    from fastdecoders.io import write_latents

    wd = ("--weights-dir", taesd_weights_dir)
    code, out, err = run_cli(capsys, "list", *wd, "--json")
    assert code == 0, err
    rows = {d["name"]: d for d in json.loads(out)["decoders"]}
    assert rows[STUDENT]["weights_local"] and rows[SWITCH]["weights_local"] and rows[SWITCH]["arch"] == "switch"
    write_latents(latents(2), tmp_path / "z.safetensors")
    code, _, err = run_cli(capsys, "decode", SWITCH, tmp_path / "z.safetensors", "-o", tmp_path / "png", "--tile",
                           "off", *wd)  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["00000.png", "00001.png"]
    for name in (STUDENT, SWITCH):
        code, out, err = run_cli(capsys, "roundtrip", name, "--images", kodak_dir, "--limit", 1, "--size", 64,
                                 "-o", tmp_path / f"{name}.png", *wd, "--json")  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["mean"]["psnr"] > 15  # a real decode of a real photo (TAEF2 itself: about 28 dB at 64²)
    code, out, err = run_cli(capsys, "eval", STUDENT, SWITCH, "--images", kodak_dir, "--limit", 1, "--size", 64,
                             "--metrics", "psnr", "-o", tmp_path / "eval", *wd, "--json")  # fmt: skip
    assert code == 0, err
    assert {STUDENT, SWITCH} <= set(json.loads(out)["decoders"])
    monkeypatch.setenv("FASTDECODERS_WEIGHTS", str(taesd_weights_dir))  # bench finds weights on the weights path
    code, out, err = run_cli(capsys, "bench", STUDENT, SWITCH, "--sizes", 64, "--runs", 1, "--threads", 1,
                             "--no-peak", "--no-teacher", "--plot", tmp_path / "bench.png", "--json")  # fmt: skip
    assert code == 0, err
    assert STUDENT in out and SWITCH in out
