"""Linear latent -> RGB previews: a 1x1 convolution plus a bias per latent family, fitted by least squares.

A linear preview maps diffusion-space latents (B, C, h, w) — or any (B, C, ...) layout with channels second — to RGB
in [-1, 1] (unclamped) at the *latent* resolution (B, 3, h, w): one pixel per latent cell. It costs one small matmul,
which is why it is the cheapest live preview there is. The fitted numbers ship as JSON files beside this module
(``<family>.json``, made by ``benchmarks/fit_previews.py``); ``fastdecoders preview fit`` makes one for any VAE.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.integrations.diffusers import same_latents
from fastdecoders.io import atomic_write_text
from fastdecoders.latents import LATENT_SPACES, LatentSpace, get_latent_space
from fastdecoders.models.protocol import LatentDecoder

FORMAT = "fastdecoders-linear-preview"
SHIPPED_DIR = Path(__file__).resolve().parent


class LinearPreview(LatentDecoder):
    """RGB = W · z + b per latent cell. ``weight`` (3, C), ``bias`` (3,); ``fit`` holds how the numbers were made."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        latents: str | None = None,
        spatial_factor: int = 8,
        fit: dict[str, Any] | None = None,
    ):
        super().__init__()
        weight, bias = torch.as_tensor(weight, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32)
        if weight.ndim != 2 or weight.shape[0] != 3 or bias.shape != (3,):
            raise FastDecodersError(
                f"linear preview: expected weight (3, C) and bias (3,), got {tuple(weight.shape)} and "
                f"{tuple(bias.shape)}"
            )
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.latent_space_name = latents
        self.registry_name = f"linear-{latents}" if latents else "linear"
        self.spatial_factor = spatial_factor
        self.fit = dict(fit or {})

    @property
    def latent_channels(self) -> int:
        return self.weight.shape[1]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, ...) diffusion-space latents -> (B, 3, ...) RGB in [-1, 1] (unclamped), same trailing shape."""
        if not isinstance(latents, torch.Tensor) or latents.ndim < 3 or latents.shape[1] != self.latent_channels:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise FastDecodersError(
                f"{self.registry_name}: expected latents (B, {self.latent_channels}, h, w), got {shape}"
            )
        weight = self.weight.to(latents.dtype)
        bias = self.bias.to(latents.dtype).view(1, 3, *([1] * (latents.ndim - 2)))
        return torch.einsum("oc,bc...->bo...", weight, latents) + bias

    # -- files ------------------------------------------------------------------------------------------------------

    def decode_latents(self, latents: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """The decode protocol: per latent cell, so frames and NCTHW clips alike (``num_frames`` does not matter)."""
        return self(latents)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "latents": self.latent_space_name,
            "channels": self.latent_channels,
            "spatial_factor": self.spatial_factor,
            "weight": [[round(v, 6) for v in row] for row in self.weight.tolist()],
            "bias": [round(v, 6) for v in self.bias.tolist()],
            "fit": self.fit,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON file atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LinearPreview:
        """A linear preview JSON file (``fastdecoders preview fit`` output or a shipped one)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise FastDecodersError(f"{path} is not a readable linear-preview JSON file ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise FastDecodersError(f"{path}: expected a JSON file with format {FORMAT!r}")
        return cls(data["weight"], data["bias"], data.get("latents"), data.get("spatial_factor", 8), data.get("fit"))


def shipped_families() -> list[str]:
    """The latent families with a fitted linear preview inside the package."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.json") if p.stem in LATENT_SPACES)


def load_linear_preview(latents: str | LatentSpace | os.PathLike) -> LinearPreview:
    """The shipped linear preview of a latent family (``"sdxl"`` …; families with the same latents share one, e.g.
    ``svd`` uses ``sd1``'s), or a JSON file path."""
    if isinstance(latents, (str, os.PathLike)) and str(latents).endswith(".json"):
        return LinearPreview.load(latents)

    space = get_latent_space(latents)
    for family in shipped_families():
        if same_latents(get_latent_space(family), space):
            preview = LinearPreview.load(SHIPPED_DIR / f"{family}.json")
            preview.latent_space_name = space.name
            return preview
    raise FastDecodersError(
        f"no linear preview ships for {space.name} latents (shipped: {', '.join(shipped_families()) or 'none'}); "
        f"fit one with `fastdecoders preview fit --vae ... --images DIR -o FILE`"
    )


# -- fitting --------------------------------------------------------------------------------------------------------


def fit_linear(latents: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (weight (3, C), bias (3,)) with targets ≈ weight · latents + bias per cell.

    Args:
        latents: (N, C, h, w) latents (or (P, C) samples).
        targets: (N, 3, h, w) RGB at the latent resolution (or (P, 3)), same cells.
    """
    x = latents.movedim(1, -1).reshape(-1, latents.shape[1]) if latents.ndim > 2 else latents
    y = targets.movedim(1, -1).reshape(-1, targets.shape[1]) if targets.ndim > 2 else targets
    if x.shape[0] != y.shape[0] or y.shape[1] != 3:
        raise FastDecodersError(
            f"fit_linear: expected latents and 3-channel targets over the same cells, got {tuple(latents.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if x.shape[0] <= x.shape[1]:
        raise FastDecodersError(f"fit_linear: {x.shape[0]} samples cannot fit {x.shape[1]} channels + a bias")
    design = torch.cat([x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, y.double()).solution  # (C + 1, 3); CPU lstsq uses gelsy (rank-revealing)
    return solution[:-1].T.float().contiguous(), solution[-1].float().contiguous()
