"""Training a gate without labels and calibrating a switch: both decoders run on unlabelled latents, the gate learns
to predict the light decoder's deficit against the heavy one, the threshold is chosen on held-back items."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fastdecoders.bench.flops import count_flops
from fastdecoders.errors import FastDecodersError
from fastdecoders.eval.metrics import ssim
from fastdecoders.io import center_crop_resize, list_images, read_image
from fastdecoders.latents import get_latent_space, to_01
from fastdecoders.models.base import Decoder
from fastdecoders.progress import progress
from fastdecoders.switching.calibrate import threshold_for_budget, threshold_for_floor, within_floor
from fastdecoders.switching.core import SwitchConfig, SwitchDecoder, check_pair, default_feature_point, light_head
from fastdecoders.switching.gate import Gate, GateConfig
from fastdecoders.weights import load_decoder, load_encoder

#: what a gate can be trained to predict (``fit_switch``'s ``score``)
SCORES = ("deficit", "gain")


@dataclass
class Collected:
    """Per item (N items): gate inputs and what both decoders did with them."""

    latents: torch.Tensor  # (N, C, h, w) diffusion-space latents
    features: torch.Tensor | None  # (N, Cf, h', w') the light decoder's features at ``point``
    deficit: torch.Tensor  # (N,) 10·log10 MSE(light, heavy) on [0, 1] outputs, dB (the gate's target)
    light_psnr: torch.Tensor | None  # (N,) against the photo, dB (when photos are given)
    heavy_psnr: torch.Tensor | None
    point: str | None
    light_ssim: torch.Tensor | None = None  # (N,) against the photo
    heavy_ssim: torch.Tensor | None = None


def mse_db(a01: torch.Tensor, b01: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) x2 in [0, 1] -> (N,) 10·log10 of the per-item MSE (= −PSNR for a peak of 1)."""
    mse = (a01 - b01).double().pow(2).flatten(1).mean(1)
    return 10 * torch.log10(mse.clamp_min(1e-12))


@torch.no_grad()
def collect(light: Decoder, heavy: Decoder, latents: torch.Tensor, photos01: torch.Tensor | None = None,
            point: str | None = None, batch_size: int = 4, show: bool = True) -> Collected:  # fmt: skip
    """Run both decoders on (N, C, h, w) latents, batch by batch, keeping only the gate inputs and per-item scores.

    ``photos01`` (N, 3, H, W) in [0, 1]: also each decoder's PSNR and SSIM against the photo (quality floors,
    reports).
    ``point``: keep the light decoder's features there (a "features" gate).
    """
    feats, deficit, lp, hp, ls, hs = [], [], [], [], [], []
    bar = progress(total=latents.shape[0], desc="decoding light + heavy", unit="items", enabled=show)
    for i in range(0, latents.shape[0], batch_size):
        z = latents[i : i + batch_size]
        if point is not None:
            feats.append(light_head(light, z, point))
        y_l = to_01(light(z)).clamp(0, 1)
        y_h = to_01(heavy(z)).clamp(0, 1)
        deficit.append(mse_db(y_l, y_h))
        if photos01 is not None:
            p = photos01[i : i + batch_size]
            lp.append(-mse_db(y_l, p))
            hp.append(-mse_db(y_h, p))
            ls.append(ssim(y_l, p))
            hs.append(ssim(y_h, p))
        bar.update(z.shape[0])
    bar.close()
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    return Collected(latents, cat(feats), torch.cat(deficit).float(), cat(lp), cat(hp), point, cat(ls), cat(hs))


def train_gate(inputs: torch.Tensor, targets: torch.Tensor, kind: str = "latent", epochs: int = 300, lr: float = 2e-3,
               seed: int = 0, width: int = 32, hidden: int = 32, show: bool = True) -> Gate:  # fmt: skip
    """A gate fitted to predict ``targets`` (N,) from ``inputs`` (N, C, h, w): Huber loss on standardised targets,
    full-batch AdamW, random horizontal/vertical flips of the inputs (a mirrored latent has about the same deficit)."""
    if inputs.shape[0] < 2:
        raise FastDecodersError(f"gate: expected at least 2 training items, got {inputs.shape[0]}")
    torch.manual_seed(seed)
    gate = Gate(GateConfig(inputs.shape[1], kind, width, hidden))
    gate.set_statistics(inputs, targets)
    y = (targets - gate.out_mean) / gate.out_std
    opt = torch.optim.AdamW(gate.parameters(), lr=lr, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    gate.train()
    for _ in progress(range(epochs), desc=f"training the {kind} gate", unit="epochs", enabled=show):
        x = inputs
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-2)
        loss = F.smooth_l1_loss(gate.normalised(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return gate.eval().requires_grad_(False)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two (N,) tensors (no tie correction; scores are continuous)."""
    if a.numel() < 2:
        return float("nan")
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def load_photos(folder: str | Path, size: int, limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """(N, 3, size, size) centre crops in [0, 1] of the photos in ``folder`` (sorted), and their paths."""
    paths = list_images(folder)[:limit]
    if not paths:
        raise FastDecodersError(f"--images: expected a folder with photos, got none in {folder}")
    return torch.stack([center_crop_resize(read_image(p), size) for p in paths]), [str(p) for p in paths]


@torch.no_grad()
def encode_photos(photos01: torch.Tensor, space: str, weights_dir: str | None = None, batch_size: int = 4,
                  show: bool = True) -> torch.Tensor:  # fmt: skip
    """(N, 3, H, W) in [0, 1] -> (N, C, H/f, W/f) diffusion-space latents with the space's tiny encoder."""
    stem = get_latent_space(space).tae_encoder
    if stem is None:
        raise FastDecodersError(f"switch fit: no tiny encoder is known for {space} latents; pass latents instead")
    encoder = load_encoder(stem, weights_dir)
    out = []
    for i in progress(range(0, photos01.shape[0], batch_size), desc="encoding photos", unit="batches", enabled=show):
        out.append(encoder(photos01[i : i + batch_size] * 2 - 1))
    return torch.cat(out)


def split_holdout(n: int, holdout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed split of N items: every k-th item (k = round(1/holdout)) is held back for calibration."""
    if n < 4:
        raise FastDecodersError(f"switch fit: expected at least 4 items (fit + held back), got {n}")
    step = max(2, round(1 / holdout))
    held = torch.zeros(n, dtype=torch.bool)
    held[step - 1 :: step] = True
    return (~held).nonzero().squeeze(1), held.nonzero().squeeze(1)


def fit_switch(light: Decoder, heavy: Decoder, latents: torch.Tensor, photos01: torch.Tensor | None = None, *,
               light_name: str, heavy_name: str, kind: str = "latent", budget: float | None = None,
               floor: tuple[float, float] | None = None, holdout: float = 0.2, epochs: int = 300,
               batch_size: int = 4, show: bool = True, collected: Collected | None = None, width: int = 32,
               hidden: int = 32, score: str = "deficit") -> tuple[Any, dict]:  # fmt: skip
    """Train a gate on most of the items and calibrate the threshold on the held-back rest; returns the switch and a
    report (held-back routing, quality and gate accuracy).

    ``score``: what the gate predicts. ``"deficit"`` (label-free): the light decoder's error against the heavy
    decoder's output, ``10·log10 MSE(light, heavy)``. ``"gain"``: the PSNR the heavy decoder gains over the light one
    against the photo (dB; needs ``photos01``, the photos the latents were encoded from: no annotation, but not
    label-free in the issue's sense). The deficit ranks photos by absolute error (textured photos, where both decoders
    are poor), the gain ranks them the way a mean PSNR counts them (docs/switch.md)."""
    check_pair(light, heavy)
    if (budget is None) == (floor is None):
        raise FastDecodersError("switch fit: give exactly one of --budget or --floor")
    if floor is not None and photos01 is None:
        raise FastDecodersError("switch fit: a quality floor needs the photos (--images) to measure PSNR against")
    if score not in SCORES:
        raise FastDecodersError(f"switch fit: expected a gate score among {', '.join(SCORES)}, got {score!r}")
    if score == "gain" and photos01 is None and (collected is None or collected.light_psnr is None):
        raise FastDecodersError("switch fit: the 'gain' score needs the photos (--images) to measure PSNR against")
    point = default_feature_point(light) if kind == "features" else None
    data = collected or collect(light, heavy, latents, photos01, point, batch_size, show)
    fit_idx, held_idx = split_holdout(latents.shape[0], holdout)
    inputs = data.features if kind == "features" else data.latents
    target = data.deficit if score == "deficit" else (data.heavy_psnr - data.light_psnr).float()
    gate = train_gate(inputs[fit_idx], target[fit_idx], kind, epochs, width=width, hidden=hidden, show=show)
    scores = gate(inputs[held_idx])
    if budget is not None:
        threshold = threshold_for_budget(scores, budget)
    else:
        threshold = threshold_for_floor(scores, data.light_psnr[held_idx], data.heavy_psnr[held_idx], *floor)
    gc = gate.config
    config = SwitchConfig(light_name, heavy_name, kind, threshold, point, gc.in_channels, gc.width, gc.hidden,
                          score=score)  # fmt: skip
    sw = SwitchDecoder(config, light, heavy, gate).eval()
    mask = scores > threshold
    report: dict[str, Any] = {
        "light": light_name, "heavy": heavy_name, "gate_input": kind, "gate_score": score,
        "items_fit": int(fit_idx.numel()),
        "items_held_back": int(held_idx.numel()), "threshold_db": threshold,
        "target": {"budget": budget} if budget is not None else {"floor": {"fraction": floor[0], "db": floor[1]}},
        "held_back_heavy_fraction": float(mask.double().mean()),
        "gate_spearman_held_back": spearman(scores, target[held_idx]),
    }  # fmt: skip
    if data.light_psnr is not None:
        lp, hp = data.light_psnr[held_idx], data.heavy_psnr[held_idx]
        routed = torch.where(mask, hp, lp)
        gap = float((hp - lp).mean())
        recovered = float((routed - lp).mean()) / gap if gap > 0 else math.nan
        report["held_back_psnr"] = {"light": float(lp.mean()), "heavy": float(hp.mean()),
                                    "switch": float(routed.mean()), "gap_recovered": recovered}  # fmt: skip
        if floor is not None:
            report["held_back_within_floor"] = within_floor(mask, lp, hp, floor[1])
    report["flops"] = gate_flops(sw, latents[:1])
    return sw, report


def fit_from_images(light: str, heavy: str, images: str | Path, out: str | Path, *, size: int = 256,
                    limit: int | None = None, kind: str = "latent", budget: float | None = None,
                    floor: tuple[float, float] | None = None, holdout: float = 0.2, epochs: int = 300,
                    weights_dir: str | None = None, show: bool = True, score: str = "deficit") -> dict:  # fmt: skip
    """``fastdecoders switch fit``: load both decoders (names or files), encode the photos of ``images`` with the
    latent space's tiny encoder, fit and calibrate (``fit_switch``), write the switch file ``out`` (.safetensors,
    the report in its metadata); returns the report with ``file`` added."""
    if not str(out).endswith(".safetensors"):
        raise FastDecodersError(f"-o: expected a .safetensors path, got {out}")
    if budget is not None and not 0 <= budget <= 1:
        raise FastDecodersError(f"--budget: expected a fraction in [0, 1], got {budget}")
    if not 0 < holdout < 1:
        raise FastDecodersError(f"--holdout: expected a fraction in (0, 1), got {holdout}")
    if not Path(images).is_dir():
        raise FastDecodersError(f"--images: expected a folder of photos, got {images}")
    light_d = load_decoder(light, weights_dir=weights_dir)
    heavy_d = load_decoder(heavy, weights_dir=weights_dir)
    check_pair(light_d, heavy_d)  # before the (slow) encoding and decoding
    photos, _ = load_photos(images, size, limit)
    with torch.no_grad():
        latents = encode_photos(photos, light_d.latent_space_name, weights_dir, show=show)
    sw, report = fit_switch(light_d, heavy_d, latents, photos, light_name=light, heavy_name=heavy, kind=kind,
                            budget=budget, floor=floor, holdout=holdout, epochs=epochs, show=show,
                            score=score)  # fmt: skip
    report["file"] = sw.save_pretrained(str(out), extra={"report": report})
    return report


def gate_flops(sw: Any, z: torch.Tensor) -> dict[str, float]:
    """FLOPs of one item (``fastdecoders.bench.flops.count_flops``): gate, light, heavy, and gate / light."""
    light, heavy = sw.light, sw.heavy
    if sw.config.input == "features":
        feats = light_head(light, z, sw.config.feature_point)
        gate = count_flops(lambda: sw.gate(feats))
    else:
        gate = count_flops(lambda: sw.gate(z))
    lf = count_flops(lambda: light(z))
    out = {"gate": gate, "light": lf, "gate_over_light": gate / lf}
    if heavy is not None:
        out["heavy"] = count_flops(lambda: heavy(z))
    return out
