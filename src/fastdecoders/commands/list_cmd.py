"""``fastdecoders list``: registered decoders, latent spaces, and which weights are found locally."""

from __future__ import annotations

import argparse

from fastdecoders.commands import add_weights_dir, format_table
from fastdecoders.latents import LATENT_SPACES
from fastdecoders.models import build_decoder
from fastdecoders.registry import get_spec, list_decoders
from fastdecoders.weights import weights_status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_weights_dir(parser)


def run(args: argparse.Namespace) -> dict:
    found = weights_status(args.weights_dir)
    decoders = []
    for name in list_decoders(composites=True):
        spec = get_spec(name)
        decoders.append({
            "name": name,
            "arch": spec.arch,
            "latents": spec.latents,
            "params": None if spec.composite else _params(name),  # a switch: its two decoders' and a gate's
            "weights": found[name] or (f"hub:{spec.hub_id}" if spec.hub_id else None),
            "weights_local": found[name] is not None,
            "description": spec.description,
        })  # fmt: skip
    spaces = [
        {
            "name": s.name,
            "description": s.description,
            "channels": s.channels,
            "spatial_factor": s.spatial_factor,
            "temporal_factor": s.temporal_factor,
            "layout": s.layout,
            "scaling": "mean/std" if s.latents_mean else f"x{s.scaling_factor:g} shift {s.shift_factor:g}",
            "vae_class": s.vae_class,
        }
        for s in LATENT_SPACES.values()
    ]
    return {"decoders": decoders, "latent_spaces": spaces}


def _params(name: str) -> int:
    import torch

    with torch.device("meta"):  # counting parameters needs no memory
        return build_decoder(name).num_parameters()


def render(result: dict) -> str:
    decoders = format_table(
        ["decoder", "arch", "latents", "params", "weights"],
        [[d["name"], d["arch"], d["latents"], "-" if d["params"] is None else f"{d['params'] / 1e6:.2f}M",
          d["weights"] or "not found"]
         for d in result["decoders"]],
    )  # fmt: skip
    spaces = format_table(
        ["latent space", "channels", "factor", "frames", "layout", "scaling", "VAE class"],
        [[s["name"], s["channels"], f"x{s['spatial_factor']}", f"x{s['temporal_factor']}", s["layout"],
          s["scaling"], s["vae_class"]] for s in result["latent_spaces"]],
    )  # fmt: skip
    return f"{decoders}\n\n{spaces}"
