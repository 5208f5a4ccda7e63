"""LPIPS (Zhang et al. 2018) with an AlexNet or VGG16 backbone, in plain torch (no torchvision).

    d(x, y) = Σ_l mean_hw ‖ w_l ⊙ (φ̂_l(x) − φ̂_l(y)) ‖²,   φ̂ = channel-unit-normalised backbone activations

The backbone layers are laid out exactly like torchvision's ``alexnet().features`` / ``vgg16().features`` so that
their ImageNet checkpoints (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``) load key for key. Those cannot be
downloaded here; they are looked up in ``--lpips-weights`` (a file or a folder), then ``$FASTDECODERS_LPIPS``
(``os.pathsep`` list), then torch's hub cache (``$TORCH_HOME/hub/checkpoints``). The linear heads (``lin{i}``) come
from the PyPI ``lpips`` package's ``weights/v0.1/{alex,vgg}.pth`` (installed with ``--no-deps`` it is just files)
or from an ``{alex,vgg}.pth`` next to the backbone.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.models.fileformat import load_strict, read_state_dict

LPIPS_ENV = "FASTDECODERS_LPIPS"
# the LPIPS input normalisation, applied to images in [-1, 1] (constants of the LPIPS paper's release)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


@dataclass(frozen=True)
class Backbone:
    #: torchvision checkpoint file name (what torch.hub caches) and a glob for renamed copies.
    file: str
    glob: str
    #: ("C", out, kernel, stride, padding) convolutions, "R" ReLU, ("M",) 3x3/2 (AlexNet) or 2x2/2 (VGG) max-pool.
    layers: tuple[tuple, ...]
    #: indices of the ReLUs whose outputs LPIPS compares.
    taps: tuple[int, ...]


def _vgg16_layers() -> tuple[tuple, ...]:
    layers: list[tuple] = []
    for stage, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        for _ in range(convs):
            layers += [("C", width, 3, 1, 1), ("R",)]
        if stage < 4:  # torchvision's last pool comes after relu5_3, which LPIPS never reaches
            layers.append(("M", 2, 2))
    return tuple(layers)


BACKBONES: dict[str, Backbone] = {
    "alex": Backbone(
        "alexnet-owt-7be5be79.pth",
        "alexnet*",
        (
            ("C", 64, 11, 4, 2),
            ("R",),
            ("M", 3, 2),
            ("C", 192, 5, 1, 2),
            ("R",),
            ("M", 3, 2),
            ("C", 384, 3, 1, 1),
            ("R",),
            ("C", 256, 3, 1, 1),
            ("R",),
            ("C", 256, 3, 1, 1),
            ("R",),
        ),
        taps=(1, 4, 7, 9, 11),
    ),
    "vgg": Backbone("vgg16-397923af.pth", "vgg16*", _vgg16_layers(), taps=(3, 8, 15, 22, 29)),
}


def _build_features(layers: tuple[tuple, ...]) -> nn.Sequential:
    modules: list[nn.Module] = []
    channels = 3
    for spec in layers:
        if spec[0] == "C":
            _, out, kernel, stride, padding = spec
            modules.append(nn.Conv2d(channels, out, kernel, stride=stride, padding=padding))
            channels = out
        elif spec[0] == "R":
            modules.append(nn.ReLU())
        else:
            modules.append(nn.MaxPool2d(spec[1], stride=spec[2]))
    return nn.Sequential(*modules)


class LPIPS(nn.Module):
    """``forward(x, y)``: (N, 3, H, W) images in [0, 1] -> (N,) LPIPS distances (0 for identical images).

    Built with random weights; ``load_lpips`` fills in the real ones.
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in BACKBONES:
            raise FastDecodersError(f"unknown LPIPS backbone {net!r}; known: {', '.join(BACKBONES)}")
        self.net = net
        spec = BACKBONES[net]
        self.features = _build_features(spec.layers)
        self.taps = spec.taps
        widths = [self.features[i - 1].out_channels for i in spec.taps]
        self.lins = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in widths)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def _taps(self, images01: torch.Tensor) -> list[torch.Tensor]:
        x = (images01 * 2 - 1 - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if i in self.taps:
                # unit length along channels; the epsilon keeps all-zero (dead ReLU) positions at 0
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise FastDecodersError(f"lpips: expected two (N, 3, H, W) images, got {tuple(x.shape)}, {tuple(y.shape)}")
        if x.shape[0] == 0:
            return torch.zeros(0, device=x.device)
        # x and y go through the backbone as one batch
        total = torch.zeros(x.shape[0], device=x.device)
        for f, lin in zip(self._taps(torch.cat([x, y]).to(self.shift.dtype)), self.lins, strict=True):
            a, b = f.chunk(2)
            total = total + lin((a - b) ** 2).mean((1, 2, 3))
        return total

    def load_backbone(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load a torchvision ``alexnet``/``vgg16`` state dict (``features.*`` keys; the classifier is ignored)."""
        features = {k[len("features.") :]: v.float() for k, v in state.items() if k.startswith("features.")}
        # LPIPS never uses layers past its last tap (VGG's last pool); a full torchvision file has none beyond it
        wanted = self.features.state_dict()
        load_strict(self.features, {k: v for k, v in features.items() if k in wanted} if features else {}, source)

    def load_heads(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load the ``lpips`` package's head file (``lin{i}.model.1.weight``, each (1, C, 1, 1))."""
        heads = {f"{k[3]}.weight": v.float() for k, v in state.items() if k.startswith("lin") and k.endswith("weight")}
        load_strict(self.lins, heads, source)


# -- finding the weights --------------------------------------------------------------------------------------------


def _search_places(path: str | os.PathLike | None) -> list[Path]:
    places = [Path(path)] if path else []
    places += [Path(p) for p in os.environ.get(LPIPS_ENV, "").split(os.pathsep) if p]
    places.append(Path(torch.hub.get_dir()) / "checkpoints")
    return places


def _looks_like(net: str, state: dict[str, torch.Tensor]) -> bool:
    first = state.get("features.0.weight")
    return first is not None and tuple(first.shape[-2:]) == ((11, 11) if net == "alex" else (3, 3))


def find_backbone(net: str, path: str | os.PathLike | None = None) -> Path | None:
    """The backbone checkpoint for ``net``: ``path`` itself if it is a file of that network, else the first match
    of the torchvision file name (or ``alexnet*``/``vgg16*``) in ``path``, ``$FASTDECODERS_LPIPS``, the hub cache."""
    spec = BACKBONES[net]
    for place in _search_places(path):
        if place.is_file():
            if _looks_like(net, read_state_dict(place)[0]):
                return place
            continue
        if place.is_dir():
            exact = place / spec.file
            if exact.is_file():
                return exact
            matches = sorted(p for p in place.glob(spec.glob) if p.suffix in (".pth", ".pt", ".safetensors"))
            if matches:
                return matches[0]
    return None


def find_heads(net: str, backbone: Path | None = None) -> Path | None:
    """``{net}.pth`` next to the backbone file, else the one inside the installed ``lpips`` package."""
    if backbone is not None and (backbone.parent / f"{net}.pth").is_file():
        return backbone.parent / f"{net}.pth"
    spec = importlib.util.find_spec("lpips")  # finds the files without importing lpips (which needs torchvision)
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / f"{net}.pth"
        if candidate.is_file():
            return candidate
    return None


def missing_weights_message(net: str, path: str | os.PathLike | None = None) -> str:
    spec = BACKBONES[net]
    where = ", ".join(str(p) for p in _search_places(path))
    return (
        f"LPIPS ({net}) needs torchvision's ImageNet {'AlexNet' if net == 'alex' else 'VGG16'} weights "
        f"{spec.file}, which cannot be downloaded here: put the file in {Path(torch.hub.get_dir()) / 'checkpoints'} "
        f"or pass --lpips-weights FILE|DIR (or ${LPIPS_ENV}); looked in {where}"
    )


def load_lpips(net: str = "alex", path: str | os.PathLike | None = None, device=None) -> LPIPS:
    """An LPIPS network with real backbone and head weights, in eval mode; one clear error if either is missing."""
    if net not in BACKBONES:
        raise FastDecodersError(f"unknown LPIPS backbone {net!r}; known: {', '.join(BACKBONES)}")
    backbone = find_backbone(net, path)
    if backbone is None:
        raise FastDecodersError(missing_weights_message(net, path))
    heads = find_heads(net, backbone)
    if heads is None:
        raise FastDecodersError(
            f"LPIPS ({net}) linear heads not found: pip install --no-deps lpips==0.1.4, or put "
            f"{net}.pth (lin0..lin4) next to {backbone}"
        )
    model = LPIPS(net)
    model.load_backbone(read_state_dict(backbone)[0], str(backbone))
    model.load_heads(read_state_dict(heads)[0], str(heads))
    return model.to(device).eval()
