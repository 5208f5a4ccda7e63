"""Choosing the switch's threshold on held-back items: for a compute budget or for a quality floor."""

from __future__ import annotations

import torch

from fastdecoders.errors import FastDecodersError


def _finite_scores(scores: torch.Tensor) -> torch.Tensor:
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if scores.numel() == 0:
        raise FastDecodersError("calibration: expected at least one held-back item, got none")
    if not torch.isfinite(scores).all():
        raise FastDecodersError("calibration: the gate scored NaN or Inf on held-back items")
    return scores


def threshold_for_budget(scores: torch.Tensor, budget: float) -> float:
    """The threshold routing at most ``budget`` (a fraction in [0, 1]) of these items heavy: the
    ``floor(budget·N) + 1``-th highest score (items strictly above it go heavy; ties only lower the fraction)."""
    if not 0.0 <= budget <= 1.0:
        raise FastDecodersError(f"budget: expected a fraction of items in [0, 1], got {budget}")
    s = _finite_scores(scores).sort(descending=True).values
    k = int(budget * s.numel() + 1e-9)
    if k >= s.numel():
        return float("-inf")
    return float(s[k])


def within_floor(heavy_mask: torch.Tensor, light_psnr: torch.Tensor, heavy_psnr: torch.Tensor, db: float) -> float:
    """Fraction of items whose routed output is within ``db`` dB (PSNR against the photo) of the heavy decoder's."""
    ok = heavy_mask | (light_psnr >= heavy_psnr - db)
    return float(ok.double().mean())


def threshold_for_floor(scores: torch.Tensor, light_psnr: torch.Tensor, heavy_psnr: torch.Tensor,
                        fraction: float = 0.95, db: float = 1.0) -> float:  # fmt: skip
    """The highest threshold (fewest items heavy) at which at least ``fraction`` of these items are within ``db`` dB
    of the heavy decoder's PSNR: light-routed items count when the light decoder alone is that close, heavy-routed
    ones always do."""
    if not 0.0 < fraction <= 1.0 or db < 0:
        raise FastDecodersError(f"floor: expected a fraction in (0, 1] and dB >= 0, got {fraction} and {db}")
    s = _finite_scores(scores)
    order = s.argsort(descending=True)
    mask = torch.zeros_like(s, dtype=torch.bool)
    light_psnr, heavy_psnr = torch.as_tensor(light_psnr).double(), torch.as_tensor(heavy_psnr).double()
    for k in range(s.numel() + 1):
        if k:
            mask[order[k - 1]] = True
        if within_floor(mask, light_psnr, heavy_psnr, db) >= fraction - 1e-12:
            return float("-inf") if k == s.numel() else float(s[order[k]])
    return float("-inf")


def parse_floor(text: str) -> tuple[float, float]:
    """``"0.95@1"`` or ``"95%@1dB"`` -> (0.95, 1.0): that fraction of items within that many dB of heavy."""
    try:
        frac, db = text.lower().replace("db", "").split("@")
        value = float(frac.rstrip("%")) / (100 if frac.endswith("%") else 1)
        return value, float(db)
    except ValueError:
        raise FastDecodersError(
            f"--floor: expected FRACTION@DB like 0.95@1 (95% of items within 1 dB), got {text!r}"
        ) from None
