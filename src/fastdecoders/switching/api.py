"""``fastdecoders.switch(light, heavy, gate, threshold | budget)``: a switch from decoders or their names.

Above ``switching.core``: it loads decoders by name (``fastdecoders.weights``), which itself loads switch files
(``switching.file`` -> ``switching.core``), so the core never imports the loader.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.models.base import Decoder
from fastdecoders.switching.calibrate import threshold_for_budget
from fastdecoders.switching.core import PIPELINE_VAE, SwitchConfig, SwitchDecoder, _label, default_feature_point
from fastdecoders.switching.gate import Gate
from fastdecoders.weights import load_decoder


def switch(
    light: Decoder | str,
    heavy: Decoder | str,
    gate: Gate,
    threshold: float | None = None,
    *,
    budget: float | None = None,
    calibration: torch.Tensor | None = None,
    feature_point: str | None = None,
    chunk: int = 1,
    context: int = 1,
) -> SwitchDecoder:
    """A ``SwitchDecoder`` routing between ``light`` and ``heavy`` with ``gate``.

    Give either ``threshold`` (gate score in dB above which an item goes heavy) or ``budget`` (the fraction of items
    to route heavy) with ``calibration`` latents (N, C, h, w) on which the threshold is chosen to meet it. ``light``
    and ``heavy`` may be decoders or names/paths (``load_decoder``); ``heavy="pipeline:vae"`` leaves the heavy
    decoder to be bound by ``fastdecoders.use(pipe, switch)``.
    """
    light_name = light if isinstance(light, str) else (_label(light, "light"))
    heavy_name = heavy if isinstance(heavy, str) else (_label(heavy, "heavy"))
    light_d = load_decoder(light) if isinstance(light, str) else light
    heavy_d = None if heavy == PIPELINE_VAE else (load_decoder(heavy) if isinstance(heavy, str) else heavy)
    if (threshold is None) == (budget is None):
        raise FastDecodersError("switch: give exactly one of threshold= or budget= (with calibration= latents)")
    gc = gate.config
    point = None
    if gc.input == "features":
        point = feature_point or default_feature_point(light_d)
    config = SwitchConfig(light_name, heavy_name, gc.input, math.inf if threshold is None else float(threshold),
                          point, gc.in_channels, gc.width, gc.hidden, chunk, context)  # fmt: skip
    sw = SwitchDecoder(config, light_d, heavy_d, gate)
    if budget is not None:
        if calibration is None:
            raise FastDecodersError("switch: budget= needs calibration= latents to choose the threshold on")
        with torch.no_grad():
            scores = sw.route(calibration)[0]
        sw.config = dataclasses.replace(sw.config, threshold=threshold_for_budget(scores, budget))
    return sw.eval()
