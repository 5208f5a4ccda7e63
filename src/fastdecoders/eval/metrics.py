"""Quality metrics as plain functions over tensors. No weights here (networks live in ``lpips`` and ``features``).

Images are (N, 3, H, W) float RGB in [0, 1] (decoder outputs go through ``fastdecoders.latents.to_01`` first);
per-image metrics return an (N,) float32 tensor. Conventions follow the references the tests compare against:

* PSNR: ``skimage.metrics.peak_signal_noise_ratio(data_range=1)`` (MSE over all pixels and channels), capped at
  100 dB for identical images so that means stay finite.
* SSIM: Wang et al. 2004 as ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)``: 11-tap Gaussian window, statistics only where the window fits
  (no padding), mean over pixels and channels. No pre-downsampling.
* MS-SSIM: Wang et al. 2003 weights over 5 scales with 2x2 average pooling, negatives clipped to 0, every scale
  over valid window positions as in the authors' MATLAB code; needs both sides >= 176 px. ``torchmetrics``' version
  also averages the coarsest scale's SSIM over reflect-padded borders: +-2e-4 at 512², more on small images.
* Fréchet distance (FID/FVD) and KID over feature matrices, in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from fastdecoders.errors import FastDecodersError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: smallest image side MS-SSIM accepts: after 4 halvings the 11-px window must still fit.
MS_SSIM_MIN_SIDE = SSIM_WINDOW * 2 ** (len(MS_SSIM_WEIGHTS) - 1)
PSNR_CAP_DB = 100.0


def _check_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise FastDecodersError(
            f"{what}: expected two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )


# -- PSNR -----------------------------------------------------------------------------------------------------------


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(N,) PSNR in dB between (N, C, H, W) images in [0, data_range]."""
    _check_pair(x, y, "psnr")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    floor = data_range**2 * 10 ** (-PSNR_CAP_DB / 10)  # identical images give exactly the cap, not inf
    return (10 * torch.log10(data_range**2 / mse.clamp_min(floor))).float()


# -- SSIM / MS-SSIM -------------------------------------------------------------------------------------------------


def _gaussian(size: int, sigma: float, x: torch.Tensor) -> torch.Tensor:
    offsets = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter per channel: (N, C, H, W) -> (N, C, H - k + 1, W - k + 1)."""
    c, k = x.shape[1], g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def _ssim_and_cs(x: torch.Tensor, y: torch.Tensor, data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) mean SSIM and mean contrast-structure term over valid window positions and channels."""
    g = _gaussian(SSIM_WINDOW, SSIM_SIGMA, x)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    # one filtering pass over the five stacked statistics
    stats = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), g).unflatten(1, (5, x.shape[1]))
    mu_x, mu_y, xx, yy, xy = stats.unbind(1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(N,) SSIM between (N, C, H, W) images in [0, data_range]; both sides must be >= 11 px."""
    _check_pair(x, y, "ssim")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise FastDecodersError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape)}")
    # float32 is enough: against float64 the mean differs by ~3e-6 on Kodak (E[x²] − E[x]² cancellation)
    return _ssim_and_cs(x.float(), y.float(), data_range)[0]


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(N,) MS-SSIM between (N, C, H, W) images in [0, data_range]; both sides must be >= ``MS_SSIM_MIN_SIDE``."""
    _check_pair(x, y, "ms_ssim")
    if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
        raise FastDecodersError(f"ms_ssim needs both image sides >= {MS_SSIM_MIN_SIDE} px, got {tuple(x.shape)}")
    x, y = x.float(), y.float()
    terms = []
    for scale in range(len(MS_SSIM_WEIGHTS)):
        if scale:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        full, cs = _ssim_and_cs(x, y, data_range)
        terms.append(full if scale == len(MS_SSIM_WEIGHTS) - 1 else cs)
    # negative terms would make fractional powers undefined: clip at 0 ("relu" normalisation)
    stacked = torch.stack(terms).clamp_min(0)
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=stacked.dtype).view(-1, 1)
    return stacked.pow(weights).prod(0)


# -- video ----------------------------------------------------------------------------------------------------------


def flicker(decoded: torch.Tensor, reference: torch.Tensor) -> float:
    """Temporal flicker of a decoded clip: RMSE, in 8-bit levels (0–255), between its frame-to-frame differences
    and those of the reference clip. Both (T, C, H, W) in [0, 1] with T >= 2; 0 means the decoded clip changes
    from frame to frame exactly as the reference does. Needs no weights."""
    if decoded.shape != reference.shape or decoded.ndim != 4 or decoded.shape[0] < 2:
        raise FastDecodersError(
            f"flicker: expected two (T>=2, C, H, W) clips of one shape, got "
            f"{tuple(decoded.shape)} and {tuple(reference.shape)}"
        )
    d = decoded.double().diff(dim=0) - reference.double().diff(dim=0)
    return float(d.pow(2).mean().sqrt() * 255)


# -- distribution distances over features ---------------------------------------------------------------------------


def _as_features(f: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    a = f.detach().cpu().double().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise FastDecodersError(f"{what}: need a (N >= 2, D) feature matrix, got shape {a.shape}")
    return a


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) between two Gaussians (the FID/FVD formula).

    tr (Σ1 Σ2)^½ is computed as tr (Σ1^½ Σ2 Σ1^½)^½ — the same eigenvalues, but of a symmetric PSD matrix, so the
    result is real and stable without scipy's ``sqrtm`` (whose tiny imaginary parts other code has to discard).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * np.sqrt(w.clip(min=0))) @ v.T
    inner = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.linalg.eigvalsh((inner + inner.T) / 2).clip(min=0)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def frechet_distance_features(f1: torch.Tensor | np.ndarray, f2: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two (N, D) feature sets (unbiased covariances).

    With fewer samples than dimensions (24 photos vs 2048 Inception features) the exact value comes from an
    (N1, N2) matrix: with centred features A, B, the eigenvalues of Σ1 Σ2 are the squared singular values of
    A Bᵀ / √((N1 − 1)(N2 − 1)), so tr (Σ1 Σ2)^½ is that matrix's nuclear norm. Beware that FID on few samples is
    strongly biased upwards; compare decoders only on the same inputs.
    """
    a, b = _as_features(f1, "frechet distance"), _as_features(f2, "frechet distance")
    if a.shape[1] != b.shape[1]:
        raise FastDecodersError(f"frechet distance: feature sizes differ ({a.shape[1]} vs {b.shape[1]})")
    n1, n2, dim = a.shape[0], b.shape[0], a.shape[1]
    mu1, mu2 = a.mean(0), b.mean(0)
    if max(n1, n2) >= dim:
        return frechet_distance(mu1, np.cov(a, rowvar=False), mu2, np.cov(b, rowvar=False))
    a, b = a - mu1, b - mu2
    tr1, tr2 = (a * a).sum() / (n1 - 1), (b * b).sum() / (n2 - 1)
    tr_covmean = np.linalg.svd(a @ b.T, compute_uv=False).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2 * tr_covmean)


def bootstrap_frechet_ci95(
    f1: torch.Tensor | np.ndarray, f2: torch.Tensor | np.ndarray, rounds: int = 100, seed: int = 0
) -> float | None:
    """Half-width of a 95% interval (1.96 · bootstrap std) of the Fréchet distance between *paired* feature sets
    (row i of both is the same input), resampling inputs with replacement. It reflects which inputs were drawn,
    not the small-sample bias of FID itself. None with fewer than 3 pairs."""
    a, b = _as_features(f1, "fid bootstrap"), _as_features(f2, "fid bootstrap")
    if a.shape[0] != b.shape[0]:
        raise FastDecodersError(f"fid bootstrap: paired feature sets differ in size ({a.shape[0]} vs {b.shape[0]})")
    if a.shape[0] < 3:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        idx = rng.integers(0, a.shape[0], a.shape[0])
        if len(np.unique(idx)) >= 2:
            values.append(frechet_distance_features(a[idx], b[idx]))
    return float(1.96 * np.std(values, ddof=1))


def kid(
    f1: torch.Tensor | np.ndarray,
    f2: torch.Tensor | np.ndarray,
    subset_size: int | None = None,
    subsets: int = 100,
    seed: int = 0,
    groups: np.ndarray | list | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel
    k(x, y) = (xᵀy / D + 1)³, averaged over random subsets. Returns (mean, 1.96 · std over subsets).

    ``groups`` marks *paired* sets (row i of both comes from input ``groups[i]``, e.g. a photo and its
    reconstruction): each round then splits the inputs in two disjoint halves and draws one set's subset from each,
    because the estimator assumes independent samples — a photo and its own reconstruction in the cross term drag
    KID below zero (by ~0.03 on 24 Kodak photos). ``subset_size`` defaults to min(1000, available).
    """
    a, b = _as_features(f1, "kid"), _as_features(f2, "kid")
    dim = a.shape[1]
    rng = np.random.default_rng(seed)
    if groups is not None:
        groups = np.asarray(groups)
        if a.shape[0] != b.shape[0] or len(groups) != a.shape[0]:
            raise FastDecodersError(f"kid: paired sets need equal sizes and one group per row, got {a.shape[0]}, "
                                    f"{b.shape[0]} rows and {len(groups)} groups")  # fmt: skip
        unique = np.unique(groups)
        if len(unique) < 4:
            raise FastDecodersError(f"kid: paired sets need at least 4 inputs, got {len(unique)}")
    else:
        n = min(a.shape[0], b.shape[0])
        m = subset_size or min(1000, n)
        if m > n or m < 2:
            raise FastDecodersError(f"kid: subset size {m} needs 2..{n}")
    values = []
    for _ in range(subsets):
        if groups is None:
            x, y = a[rng.choice(a.shape[0], m, replace=False)], b[rng.choice(b.shape[0], m, replace=False)]
        else:
            half = rng.permutation(unique)[: len(unique) // 2]
            rows_x, rows_y = np.flatnonzero(np.isin(groups, half)), np.flatnonzero(~np.isin(groups, half))
            m = min(subset_size or 1000, len(rows_x), len(rows_y))
            x, y = a[rng.choice(rows_x, m, replace=False)], b[rng.choice(rows_y, m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / dim + 1) ** 3, (y @ y.T / dim + 1) ** 3, (x @ y.T / dim + 1) ** 3)
        off = m * (m - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())
    return float(np.mean(values)), float(1.96 * np.std(values, ddof=1)) if len(values) > 1 else 0.0


# -- summaries ------------------------------------------------------------------------------------------------------


def mean_ci95(values) -> dict[str, float | int | None]:
    """{"mean", "ci95", "n"} of finite values: ci95 is the half-width of the Student-t 95% interval of the mean
    (None with fewer than 2 values); mean is None when there are none."""
    a = np.asarray([float(v) for v in values], dtype=np.float64)
    a = a[np.isfinite(a)]
    n = int(a.size)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    if n == 1:
        return {"mean": float(a[0]), "ci95": None, "n": 1}
    return {"mean": float(a.mean()), "ci95": float(_t975(n - 1) * a.std(ddof=1) / math.sqrt(n)), "n": n}


def _t975(dof: int) -> float:
    try:
        from scipy.stats import t
    except ImportError:  # scipy is in the eval extra; the normal quantile is close for n > 30
        return 1.959964
    return float(t.ppf(0.975, dof))
