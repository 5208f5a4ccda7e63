"""LPIPS on random weights against the paper's formula written out here with functional ops, torchvision-layout
checkpoint loading, and the clear error when the (undownloadable) backbone weights are missing."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from fastdecoders.errors import FastDecodersError
from fastdecoders.eval import lpips

# torchvision's alexnet().features: (index, stride, padding) of each conv, and where the max-pools are
ALEX_CONVS = {0: (4, 2), 3: (1, 2), 6: (1, 1), 8: (1, 1), 10: (1, 1)}
ALEX_POOLS_AFTER = {1, 4}  # ReLU indices followed by MaxPool(3, 2)


def reference_lpips_alex(state: dict[str, torch.Tensor], heads: list[torch.Tensor], x01, y01) -> torch.Tensor:
    """d(x, y) = Σ_l mean_hw Σ_c w_lc (x̂_lc − ŷ_lc)², x̂ = unit-normalised ReLU outputs after layers 1, 4, 7, 9, 11."""

    def taps(img01):
        x = (img01 * 2 - 1 - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor(
            [0.458, 0.448, 0.450]).view(1, 3, 1, 1)  # fmt: skip
        out = []
        for index, (stride, padding) in ALEX_CONVS.items():
            x = F.relu(F.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"], stride, padding))
            out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            if index + 1 in ALEX_POOLS_AFTER:
                x = F.max_pool2d(x, 3, 2)
        return out

    return sum(((a - b) ** 2 * w.view(1, -1, 1, 1)).sum(1).mean((1, 2))
               for a, b, w in zip(taps(x01), taps(y01), heads, strict=True))  # fmt: skip


def random_torchvision_alexnet(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's alexnet layout (features + classifier keys), random values."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    state = {}
    for index, shape in shapes.items():
        state[f"features.{index}.weight"] = torch.randn(shape, generator=gen) * (2 / (shape[1] * shape[2] ** 2)) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(shape[0], generator=gen) * 0.01
    state["classifier.1.weight"] = torch.zeros(8, 9216)  # present in the real file; LPIPS ignores it
    return state


@pytest.fixture
def images():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 72, 64, generator=gen)  # AlexNet's stride-4 stem and two pools leave 3x3 at the end
    return x, (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def test_alexnet_lpips_on_random_weights_matches_the_formula(images):
    state = random_torchvision_alexnet()
    gen = torch.Generator().manual_seed(2)
    heads = [torch.rand(c, generator=gen) for c in (64, 192, 384, 256, 256)]
    net = lpips.LPIPS("alex")
    net.load_backbone(state, "random")
    net.load_heads({f"lin{i}.model.1.weight": h.view(1, -1, 1, 1) for i, h in enumerate(heads)}, "random")
    x, y = images
    got = net(x, y)
    assert got.shape == (2,)
    torch.testing.assert_close(got, reference_lpips_alex(state, heads, x, y), rtol=1e-5, atol=1e-7)


VGG_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # torchvision vgg16 (width, convs) per stage


def random_torchvision_vgg16(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's vgg16 layout: conv k of the features at index 2·(convs so far) + pools so far."""
    gen = torch.Generator().manual_seed(seed)
    state, index, channels = {}, 0, 3
    for width, convs in VGG_STAGES:
        for _ in range(convs):
            std = (2 / (channels * 9)) ** 0.5
            state[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3, generator=gen) * std
            state[f"features.{index}.bias"] = torch.randn(width, generator=gen) * 0.01
            index, channels = index + 2, width  # conv, ReLU
        index += 1  # MaxPool2d(2, 2)
    return state


def reference_lpips_vgg(state: dict[str, torch.Tensor], heads: list[torch.Tensor], x01, y01) -> torch.Tensor:
    """The LPIPS formula on VGG16: unit-normalised relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, weighted squared
    differences summed over channels, averaged over positions, summed over layers."""

    def taps(img01):
        x = (img01 * 2 - 1 - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor(
            [0.458, 0.448, 0.450]).view(1, 3, 1, 1)  # fmt: skip
        out, index = [], 0
        for _, convs in VGG_STAGES:
            for _ in range(convs):
                x = F.relu(F.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1))
                index += 2
            out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            x, index = F.max_pool2d(x, 2, 2), index + 1
        return out

    return sum(((a - b) ** 2 * w.view(1, -1, 1, 1)).sum(1).mean((1, 2))
               for a, b, w in zip(taps(x01), taps(y01), heads, strict=True))  # fmt: skip


def test_vgg_lpips_on_random_weights_matches_the_formula():
    state = random_torchvision_vgg16()
    state["classifier.0.weight"] = torch.zeros(4, 8)  # the real file has a classifier; LPIPS ignores it
    gen = torch.Generator().manual_seed(3)
    heads = [torch.rand(w, generator=gen) for w, _ in VGG_STAGES]
    net = lpips.LPIPS("vgg")
    net.load_backbone(state, "random")
    net.load_heads({f"lin{i}.model.1.weight": h.view(1, -1, 1, 1) for i, h in enumerate(heads)}, "random")
    x = torch.rand(2, 3, 48, 40, generator=gen)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    got = net(x, y)
    assert got.shape == (2,) and torch.all(got > 0)
    torch.testing.assert_close(got, reference_lpips_vgg(state, heads, x, y), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("net_name", ["alex", "vgg"])
def test_lpips_is_zero_on_identical_images_symmetric_and_grows_with_noise(net_name, images):
    net = lpips.LPIPS(net_name)
    with torch.no_grad():
        for lin in net.lins:
            lin.weight.uniform_(0, 1)
    x, y = (i[..., :32, :32] for i in images) if net_name == "vgg" else images  # VGG needs only 16 px
    far = (x + 0.4 * torch.randn_like(x)).clamp(0, 1)
    assert torch.all(net(x, x) == 0)
    torch.testing.assert_close(net(x, y), net(y, x), rtol=1e-5, atol=1e-7)
    assert torch.all(net(x, far) > net(x, y))


def test_vgg_layout_matches_torchvision_keys():
    keys = set(lpips.LPIPS("vgg").features.state_dict())
    convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision vgg16().features conv indices
    assert keys == {f"{i}.{p}" for i in convs for p in ("weight", "bias")}


def test_load_lpips_from_a_folder_with_torchvision_and_head_files(tmp_path, images):
    state = random_torchvision_alexnet()
    torch.save(state, tmp_path / "alexnet-owt-7be5be79.pth")
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(heads, tmp_path / "alex.pth")  # a head file next to the backbone wins over the lpips package
    net = lpips.load_lpips("alex", tmp_path)
    x, y = images
    expected = reference_lpips_alex(state, [h.flatten() for h in heads.values()], x, y)
    torch.testing.assert_close(net(x, y), expected, rtol=1e-5, atol=1e-7)
    # a single file given directly is recognised by its first layer's shape, not its name
    torch.save(state, tmp_path / "renamed.pth")
    assert lpips.find_backbone("alex", tmp_path / "renamed.pth") == tmp_path / "renamed.pth"
    assert lpips.find_backbone("vgg", tmp_path / "renamed.pth") is None


@pytest.mark.skipif(importlib.util.find_spec("lpips") is None, reason="the PyPI lpips package (heads) is not installed")
def test_heads_of_the_lpips_package_load():
    for net_name, widths in (("alex", (64, 192, 384, 256, 256)), ("vgg", (64, 128, 256, 512, 512))):
        path = lpips.find_heads(net_name)
        assert path is not None and path.name == f"{net_name}.pth"
        net = lpips.LPIPS(net_name)
        from fastdecoders.models.fileformat import read_state_dict

        net.load_heads(read_state_dict(path)[0], str(path))
        assert [lin.weight.shape[1] for lin in net.lins] == list(widths)
        assert all(float(lin.weight.min()) >= 0 for lin in net.lins)  # LPIPS heads are non-negative


def test_missing_backbone_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(lpips.LPIPS_ENV, raising=False)
    with pytest.raises(FastDecodersError) as info:
        lpips.load_lpips("vgg", tmp_path / "empty")
    message = str(info.value)
    assert "\n" not in message
    assert "vgg16-397923af.pth" in message and "--lpips-weights" in message and str(tmp_path / "torch") in message
