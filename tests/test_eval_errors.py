"""Which errors skip an input in ``fastdecoders eval``: only input errors (``FastDecodersError``, a file gone or
unreadable). An out-of-memory error or a plain bug in a decoder is not the input's fault: it stops the run instead of
being recorded as a skipped input."""

from __future__ import annotations

import pytest
import torch

from fastdecoders import build_decoder
from fastdecoders.errors import FastDecodersError
from fastdecoders.eval import EvalConfig, evaluate
from fastdecoders.eval.runner import PER_INPUT_ERRORS
from fastdecoders.io import write_image
from fastdecoders.models import TAEDecoder


class FailsOnSecondInput(TAEDecoder):
    """A tiny TAE that raises ``error`` on its third call (warm-up + timed decode of input 1, then input 2)."""

    error: BaseException

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            raise self.error
        return super().forward(latents)


def _run(tmp_path, error: BaseException) -> dict:
    for i in range(3):
        write_image(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)), tmp_path / "in" / f"{i}.png")
    torch.manual_seed(0)
    decoder = FailsOnSecondInput(build_decoder("taesd", tiny=True).config)
    decoder.latent_space_name, decoder.registry_name, decoder.error = "sd1", "fails", error
    encoder = torch.nn.Conv2d(3, 4, 8, stride=8)  # any (N, 3, H, W) -> (N, 4, H/8, W/8) map will do
    config = EvalConfig(kind="images", source=tmp_path / "in", out=tmp_path / "out", metrics=("psnr",),
                        progress=False, write_report=False)  # fmt: skip
    return evaluate([decoder], config, encoders={"sd1": encoder})


def test_an_input_error_skips_that_input_and_the_run_goes_on(tmp_path):
    result = _run(tmp_path, FastDecodersError("latents of a shape this decoder cannot take"))
    assert result["inputs"]["evaluated"] == 2 and result["inputs"]["skipped"] == 1
    assert [s["why"] for s in result["skipped"]] == ["latents of a shape this decoder cannot take"]


@pytest.mark.parametrize("error", [RuntimeError("a plain bug"), TypeError("a plain bug"), ValueError("a plain bug")])
def test_a_bug_in_a_decoder_stops_the_run_instead_of_skipping_an_input(tmp_path, error):
    with pytest.raises(type(error), match="a plain bug"):
        _run(tmp_path, error)


def test_out_of_memory_stops_the_run(tmp_path):
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not isinstance(oom, PER_INPUT_ERRORS)
    with pytest.raises(torch.OutOfMemoryError):
        _run(tmp_path, oom)
