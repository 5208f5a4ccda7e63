"""Loss terms. Every image tensor here is RGB in [-1, 1]; frames of clips are (B, T, 3, H, W).

* pixel: L1 or MSE against the original image;
* distill: L1 or MSE against the teacher decoder's output on the same latents;
* perceptual: LPIPS or EfficientNet-Lite0 feature distance to the original (``perceptual.py``);
* adversarial: patch-GAN hinge loss, switched on at ``adversarial_start`` and ramped in over ``adversarial_warmup``;
* temporal: L1 between the frame-to-frame differences of the decoded clip and of the original clip, which
  penalises flicker that a per-frame loss does not see;
* feature: alignment of named intermediate activations with the teacher decoder's (``features.py``).

The weights in force at a step come from ``LossConfig.weights_at(step)`` (the top-level weights or a phase's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.train.config import LossConfig
from fastdecoders.train.data import Batch


def distance(x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean L1 or MSE, computed in float32 (bf16 differences of near-equal images lose most of their bits)."""
    diff = x.float() - y.float()
    return diff.abs().mean() if kind == "l1" else diff.pow(2).mean()


def temporal_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) x2 -> L1 between their frame differences (T >= 2)."""
    return distance(out.diff(dim=1), target.diff(dim=1), "l1")


# -- patch-GAN ------------------------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """(N, 3, H, W) in [-1, 1] -> (N, 1, H/2^L, W/2^L) real/fake logits, one per overlapping patch (pix2pix's
    PatchGAN, with GroupNorm so that it has no running statistics to keep in sync)."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers):
            out = channels * min(2**i, 8)
            modules += [nn.Conv2d(width, out, 4, 2, 1, bias=False), nn.GroupNorm(min(32, out // 4), out),
                        nn.LeakyReLU(0.2)]  # fmt: skip
            width = out
        modules.append(nn.Conv2d(width, 1, 3, 1, 1))
        self.net = nn.Sequential(*modules)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.float().mean()


def adversarial_weight(cfg: LossConfig, step: int) -> float:
    """0 before ``adversarial_start``, then a linear ramp to the weight in force over ``adversarial_warmup`` steps."""
    weight = cfg.weights_at(step)["adversarial"]
    if not weight or step < cfg.adversarial_start:
        return 0.0
    ramp = 1.0 if cfg.adversarial_warmup == 0 else min(1.0, (step - cfg.adversarial_start + 1) / cfg.adversarial_warmup)
    return weight * ramp


def frames(x: torch.Tensor) -> torch.Tensor:
    """Clips (B, T, 3, H, W) -> frames (B·T, 3, H, W); images pass through."""
    return x.flatten(0, 1) if x.ndim == 5 else x


# -- the generator objective ----------------------------------------------------------------------------------------


class Objective(nn.Module):
    """The student's weighted loss: ``(total, {term: value})`` for one batch of decoded output at ``step``."""

    def __init__(self, cfg: LossConfig, perceptual: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.perceptual = perceptual

    def forward(self, out: torch.Tensor, batch: Batch, step: int, disc: nn.Module | None = None,
                feature: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        """``out``: decoded batch in the batch's pixel layout, about [-1, 1]; ``feature``: the feature-alignment
        term of this step (``FeatureAlignment.loss()``), when it is on."""
        cfg, parts = self.cfg, {}
        w = cfg.weights_at(step)
        if w["pixel"]:
            parts["pixel"] = (w["pixel"], distance(out, batch.pixels, cfg.pixel_kind))
        if w["distill"]:
            if batch.teacher is None:
                raise FastDecodersError("loss.distill: expected cached teacher outputs, got a batch without them")
            parts["distill"] = (w["distill"], distance(out, batch.teacher, cfg.distill_kind))
        if w["perceptual"]:
            if self.perceptual is None:
                raise FastDecodersError("loss.perceptual: expected a perceptual network, got none")
            # perceptual networks take [0, 1]; the student's output is left unclamped so gradients flow everywhere
            x, y = (frames(t).add(1).div(2) for t in (out, batch.pixels))
            parts["perceptual"] = (w["perceptual"], self.perceptual(x, y).float().mean())
        weight = adversarial_weight(cfg, step)
        if weight and disc is not None:
            parts["adversarial"] = (weight, hinge_generator_loss(disc(frames(out))))
        if w["temporal"] and out.ndim == 5:
            parts["temporal"] = (w["temporal"], temporal_loss(out, batch.pixels))
        if w["feature"] and feature is not None:
            parts["feature"] = (w["feature"], feature)
        total = sum(wt * v for wt, v in parts.values())
        if not any(k in parts for k in ("pixel", "distill", "perceptual", "adversarial", "temporal")):
            # the output reaches no term (feature alignment alone): keep every parameter in the graph, so that
            # DistributedDataParallel sees a gradient (zero) for the layers after the last aligned module
            total = total + out.float().mean() * 0.0
        return total, {name: v.detach() for name, (_, v) in parts.items()}
