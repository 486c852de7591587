"""PSNR and SSIM against scikit-image; the Fréchet distance against a second implementation
(scipy's sqrtm); input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowception_ext.eval import fvd, psnr, ssim


def pairs(seed: int, shape=(3, 3, 24, 31)):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    b = (a + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return a, b


@pytest.mark.parametrize("seed", range(4))
def test_psnr_and_ssim_agree_with_scikit_image(seed):
    metrics = pytest.importorskip("skimage.metrics")
    a, b = pairs(seed)
    ours_psnr, ours_ssim = psnr(a, b), ssim(a, b)
    for t in range(a.shape[0]):
        x, y = a[t].numpy(), b[t].numpy()
        assert float(ours_psnr[t]) == pytest.approx(metrics.peak_signal_noise_ratio(x, y, data_range=2.0), abs=1e-4)
        ref = metrics.structural_similarity(x, y, data_range=2.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False)
        assert float(ours_ssim[t]) == pytest.approx(ref, abs=1e-4)


def test_psnr_ssim_edge_cases():
    a, b = pairs(9, shape=(2, 1, 11, 11))
    assert torch.isinf(psnr(a, a)).all() and torch.allclose(ssim(a, a), torch.ones(2, dtype=torch.float64))
    assert psnr(a[0], b[0]).shape == (1,)  # one frame [C, H, W]
    with pytest.raises(ValueError, match="one shape"):
        psnr(a, b[:1])
    with pytest.raises(ValueError, match="11"):
        ssim(a[..., :10], b[..., :10])
    with pytest.raises(TypeError, match="tensors"):
        psnr(a.numpy(), b)


def frechet_sqrtm(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's general matrix square root."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@pytest.mark.parametrize("dims, n", [(16, 200), (64, 500), (400, 600)])
def test_fvd_of_features_agrees_with_scipy_and_is_zero_on_itself(dims, n):
    rng = np.random.default_rng(dims)
    mix = rng.normal(size=(dims, dims)) / np.sqrt(dims)
    a = rng.normal(size=(n, dims)) @ mix * 5 + 3
    b = (rng.normal(size=(n, dims)) * 1.2 + 0.4) @ mix * 5 + 3
    assert abs(fvd(a, a)) <= 1e-6
    assert abs(fvd(a[:5], a[:5])) <= 1e-6  # fewer samples than dimensions: singular covariances
    assert fvd(a, b) == pytest.approx(frechet_sqrtm(a, b), rel=1e-5)
    with pytest.raises(ValueError, match="feature sizes"):
        fvd(a, b[:, :-1])
    with pytest.raises(ValueError, match="at least 2"):
        fvd(a[:1], b)
