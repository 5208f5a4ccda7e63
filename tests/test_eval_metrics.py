"""Metric formulas against reference implementations: scikit-image (PSNR, SSIM; MS-SSIM through a scipy rebuild
checked against skimage at every scale; torchmetrics too when installed),
scipy (Fréchet distance via ``sqrtm``, Student t), and a direct transcription of the KID estimator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.eval import metrics


@pytest.fixture(scope="module")
def photo_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A real photo (scikit-image's astronaut, 256x192 crop) in [0, 1] and a blurred, noisy copy."""
    skimage_data = pytest.importorskip("skimage.data")
    x = torch.from_numpy(skimage_data.astronaut()[100:292, 128:384].copy()).permute(2, 0, 1).float()[None] / 255
    gen = torch.Generator().manual_seed(0)
    y = torch.nn.functional.avg_pool2d(x, 3, 1, 1) + 0.03 * torch.randn(x.shape, generator=gen)
    return x, y.clamp(0, 1)


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).double().numpy()


def test_psnr_matches_skimage(photo_pair):
    from skimage.metrics import peak_signal_noise_ratio

    x, y = photo_pair
    ref = peak_signal_noise_ratio(_hwc(x), _hwc(y), data_range=1.0)
    assert metrics.psnr(y, x).item() == pytest.approx(ref, abs=1e-4)


def test_psnr_of_identical_images_is_capped_not_inf(photo_pair):
    x, _ = photo_pair
    assert metrics.psnr(x, x).item() == pytest.approx(metrics.PSNR_CAP_DB)


def test_ssim_matches_skimage_gaussian_wang(photo_pair):
    from skimage.metrics import structural_similarity

    x, y = photo_pair
    ref = structural_similarity(_hwc(x), _hwc(y), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0, channel_axis=2)  # fmt: skip
    assert metrics.ssim(y, x).item() == pytest.approx(ref, abs=2e-5)
    assert metrics.ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)


def test_ssim_per_image_over_a_batch(photo_pair):
    x, y = photo_pair
    batch = metrics.ssim(torch.cat([y, x]), torch.cat([x, x]))
    assert batch.shape == (2,)
    assert batch[0].item() == pytest.approx(metrics.ssim(y, x).item(), abs=1e-6) and batch[1] > 0.9999


def test_ms_ssim_matches_torchmetrics_on_a_large_image():
    """torchmetrics averages its coarsest-scale SSIM over reflect-padded borders too (we use valid positions at
    every scale, like the MATLAB original): on a 320² photo that moves the value by ~1e-4."""
    tm = pytest.importorskip("torchmetrics.functional.image")
    skimage_data = pytest.importorskip("skimage.data")
    x = torch.from_numpy(skimage_data.astronaut()[:320, 96:416].copy()).permute(2, 0, 1).float()[None] / 255
    y = (torch.nn.functional.avg_pool2d(x, 3, 1, 1) + 0.03 * torch.randn(x.shape)).clamp(0, 1)
    ref = tm.multiscale_structural_similarity_index_measure(y, x, data_range=1.0)
    assert metrics.ms_ssim(y, x).item() == pytest.approx(ref.item(), abs=5e-4)


def test_ms_ssim_coarsest_scale_is_skimage_ssim(photo_pair, monkeypatch):
    from skimage.metrics import structural_similarity

    x, y = photo_pair
    monkeypatch.setattr(metrics, "MS_SSIM_WEIGHTS", (0.0, 0.0, 0.0, 0.0, 1.0))
    x16, y16 = torch.nn.functional.avg_pool2d(x, 16), torch.nn.functional.avg_pool2d(y, 16)  # = four 2x2 halvings
    ref = structural_similarity(_hwc(x16), _hwc(y16), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0, channel_axis=2)  # fmt: skip
    assert metrics.ms_ssim(y, x).item() == pytest.approx(ref, abs=2e-5)


def _reference_ms_ssim_terms(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(SSIM, mean contrast-structure) of (H, W, C) float64 images, written with scipy.ndimage: 11-tap Gaussian
    (sigma 1.5, truncate 3.5, as skimage), statistics over the positions where the window fits."""
    from scipy import ndimage

    def blur(im: np.ndarray) -> np.ndarray:
        return np.stack([ndimage.gaussian_filter(im[..., c], 1.5, truncate=3.5) for c in range(im.shape[-1])],
                        -1)[5:-5, 5:-5]  # fmt: skip

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(a), blur(b)
    vx, vy, cxy = blur(a * a) - mx**2, blur(b * b) - my**2, blur(a * b) - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    return float(((2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs).mean()), float(cs.mean())


def test_ms_ssim_matches_a_scipy_reference_anchored_to_skimage():
    """MS-SSIM (Wang 2003) rebuilt from numpy/scipy: 2x2 mean pooling between scales, contrast-structure terms at
    scales 0..3, full SSIM at scale 4, weights as in the paper. The reference's SSIM at every scale equals
    skimage's ``structural_similarity``, so its contrast-structure terms come from the same statistics."""
    from skimage.metrics import structural_similarity

    skimage_data = pytest.importorskip("skimage.data")
    x = torch.from_numpy(skimage_data.astronaut()[:256, 64:320].copy()).permute(2, 0, 1).float()[None] / 255
    gen = torch.Generator().manual_seed(0)
    y = (torch.nn.functional.avg_pool2d(x, 3, 1, 1) + 0.03 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    a, b = _hwc(x), _hwc(y)
    terms = []
    for scale in range(5):
        if scale:
            h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
            a = a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3))
            b = b[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3))
        full, cs = _reference_ms_ssim_terms(a, b)
        skimage_ssim = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                             data_range=1.0, channel_axis=2)  # fmt: skip
        assert full == pytest.approx(skimage_ssim, abs=1e-9)
        terms.append(full if scale == 4 else cs)
    ref = float(np.prod(np.clip(terms, 0, None) ** np.array(metrics.MS_SSIM_WEIGHTS)))
    assert 0.9 < ref < 0.99  # a blurred noisy copy: clearly below 1
    assert metrics.ms_ssim(y, x).item() == pytest.approx(ref, abs=2e-5)
    assert metrics.ms_ssim(x, y).item() == pytest.approx(ref, abs=2e-5)


def test_ms_ssim_rejects_images_too_small_for_five_scales():
    x = torch.rand(1, 3, metrics.MS_SSIM_MIN_SIDE - 8, 256)
    with pytest.raises(FastDecodersError, match="176"):
        metrics.ms_ssim(x, x)


def test_mismatched_shapes_are_one_clear_error():
    with pytest.raises(FastDecodersError, match="one shape"):
        metrics.psnr(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 8))


def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("n1, n2, dim", [(24, 30, 64), (300, 200, 32)], ids=["fewer-samples-than-dims", "more"])
def test_frechet_distance_matches_scipy_sqrtm(n1, n2, dim):
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(dim, dim)) / math.sqrt(dim)  # correlated features, like a network's
    a = rng.normal(size=(n1, dim)) @ mix
    b = rng.normal(size=(n2, dim)) @ mix * 1.3 + 0.2
    ref = _scipy_frechet(a, b)
    assert metrics.frechet_distance_features(a, b) == pytest.approx(ref, rel=1e-6)
    stats = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert metrics.frechet_distance(*stats) == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    a = np.random.default_rng(1).normal(size=(50, 16))
    assert abs(metrics.frechet_distance_features(a, a)) < 1e-8
    assert metrics.bootstrap_frechet_ci95(a, a + 0.5) > 0


def test_frechet_distance_needs_two_samples():
    with pytest.raises(FastDecodersError, match="N >= 2"):
        metrics.frechet_distance_features(np.zeros((1, 4)), np.zeros((3, 4)))


def test_kid_matches_the_unbiased_mmd_formula():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(40, 8)), rng.normal(size=(40, 8)) + 0.5
    mean, ci = metrics.kid(a, b, subset_size=40, subsets=1)  # one subset = all samples, any order

    def k(x, y):
        return (x @ y.T / 8 + 1) ** 3

    m = 40
    ref = ((k(a, a).sum() - np.trace(k(a, a))) / (m * (m - 1)) + (k(b, b).sum() - np.trace(k(b, b))) / (m * (m - 1))
           - 2 * k(a, b).mean())  # fmt: skip
    assert mean == pytest.approx(ref, rel=1e-9) and ci == 0.0
    same, _ = metrics.kid(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)))
    assert abs(same) < 0.05 * ref  # same distribution: near 0 (the estimator is unbiased, so it can be < 0)


def test_kid_of_paired_sets_splits_inputs():
    """A photo and its reconstruction must not meet in the cross term: on paired sets the plain estimator goes far
    below zero, the split one stays near it."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(24, 64))
    b = a + 0.1 * rng.normal(size=a.shape)  # 'reconstructions': same distribution, paired row by row
    naive, _ = metrics.kid(a, b)
    paired, ci = metrics.kid(a, b, groups=np.arange(24))
    assert naive < -0.3 and abs(paired) < ci and ci > 0
    shifted, _ = metrics.kid(a, b + 1.0, groups=np.arange(24))
    assert shifted > 10 * ci
    with pytest.raises(FastDecodersError, match="at least 4 inputs"):
        metrics.kid(a[:3], b[:3], groups=np.arange(3))


def test_flicker_is_zero_for_static_error_and_counts_temporal_error():
    ref = torch.rand(5, 3, 16, 16)
    assert metrics.flicker(ref + 0.05, ref) == pytest.approx(0, abs=1e-4)  # a constant offset does not flicker
    wobble = ref.clone()
    wobble[1::2] += 1 / 255  # every other frame one level brighter: differences off by ±1 level
    assert metrics.flicker(wobble, ref) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(FastDecodersError, match="T>=2"):
        metrics.flicker(ref[:1], ref[:1])


def test_mean_ci95_is_the_student_t_interval():
    from scipy import stats

    values = [30.1, 31.5, 29.8, 32.2, 30.9]
    summary = metrics.mean_ci95(values + [float("nan")])
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert summary["n"] == 5 and summary["mean"] == pytest.approx(np.mean(values))
    assert summary["ci95"] == pytest.approx((high - low) / 2, rel=1e-9)
    assert metrics.mean_ci95([1.0]) == {"mean": 1.0, "ci95": None, "n": 1}
    assert metrics.mean_ci95([]) == {"mean": None, "ci95": None, "n": 0}
