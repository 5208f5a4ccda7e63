"""The gate: a tiny network that predicts, per item, how far the light decoder's output falls from the heavy one's.

Input is either the diffusion-space latent itself (``"latent"``: decide before decoding) or the light decoder's
early features (``"features"``: the output of its first stage, decide after the cheap first layers and reuse them
when the item stays light). Output is one score per item: the predicted *deficit*, in dB, of the light decoder
against the heavy one, ``10·log10(MSE(light, heavy))`` on outputs in [0, 1] (higher = the light decoder falls
shorter). The gate is trained without labels: the targets come from running both decoders on unlabelled latents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError

GATE_INPUTS = ("latent", "features")


@dataclass(frozen=True)
class GateConfig:
    #: channels of the gate's input (latent channels, or the light decoder's feature channels).
    in_channels: int
    #: "latent" or "features".
    input: str = "latent"
    #: width of the two 3x3 convs.
    width: int = 32
    #: width of the hidden layer of the head.
    hidden: int = 32

    def __post_init__(self):
        if self.input not in GATE_INPUTS:
            raise FastDecodersError(f"gate input: expected one of {', '.join(GATE_INPUTS)}, got {self.input!r}")


class Gate(nn.Module):
    """(N, C, h, w) latents or features -> (N,) predicted light-vs-heavy deficit in dB.

    Two 3x3 convs (the second with stride 2), then mean, standard deviation and maximum over space (so any size of
    image works and a single bad region can still count), then a 2-layer MLP. The input is standardised with
    per-channel statistics of the training data (buffers, saved with the gate); the output is de-standardised with
    the target's mean and std, so the raw network learns a unit-scale problem.
    """

    def __init__(self, config: GateConfig):
        super().__init__()
        self.config = config
        c, w = config.in_channels, config.width
        self.convs = nn.Sequential(
            nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Linear(3 * w, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 1))
        self.register_buffer("in_mean", torch.zeros(c))
        self.register_buffer("in_std", torch.ones(c))
        self.register_buffer("out_mean", torch.zeros(()))
        self.register_buffer("out_std", torch.ones(()))

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """The raw network's output (unit scale); ``forward`` maps it to dB."""
        x = (x - self.in_mean[:, None, None]) / self.in_std[:, None, None]
        f = self.convs(x).flatten(2)
        pooled = torch.cat([f.mean(-1), f.std(-1, unbiased=False), f.amax(-1)], dim=1)
        return self.head(pooled).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise FastDecodersError(
                f"gate: expected (N, {self.config.in_channels}, h, w) {self.config.input}, got {tuple(x.shape)}"
            )
        return self.normalised(x.to(self.in_mean.dtype)) * self.out_std + self.out_mean

    @torch.no_grad()
    def set_statistics(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Input standardisation from (N, C, h, w) training inputs; output scale from (N,) training targets."""
        self.in_mean.copy_(inputs.mean(dim=(0, 2, 3)))
        self.in_std.copy_(inputs.std(dim=(0, 2, 3)).clamp_min(1e-4))
        self.out_mean.copy_(targets.mean())
        self.out_std.copy_(targets.std().clamp_min(1e-3) if targets.numel() > 1 else torch.ones(()))
