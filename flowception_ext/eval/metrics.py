"""Video metrics on real frames: FVD (Fréchet distance of I3D statistics), and PSNR and SSIM per
frame for interpolation and reconstruction.

Videos follow the library's convention: ``[T, C, H, W]`` tensors (or a batch ``[B, T, C, H, W]``)
with values in ``[-1, 1]``. LPIPS, FID and CLIP scores need weights this library does not ship;
compute them with your own models on :func:`i3d_features`-style batches if you need them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .i3d import I3D, prepare_videos
from .stats import frechet_distance

__all__ = ["i3d_features", "fvd", "psnr", "ssim"]

FEATURES = ("logits", "pool")


def i3d_features(videos: Tensor | Sequence[Tensor], *, features: str = "logits", model: I3D | None = None,
                 num_frames: int = 16, batch_size: int = 8, progress: bool = True) -> np.ndarray:
    """I3D statistics of each video, ``[N, 400]`` (``features="logits"``) or ``[N, 1024]``
    (``"pool"``), float64. Videos are prepared by :func:`~flowception_ext.eval.i3d.prepare_videos`
    (``num_frames`` frames, 224×224) in batches of ``batch_size``; ``model`` defaults to
    :meth:`I3D.from_pretrained` and runs on its own device."""
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    videos = list(videos)
    if not videos:
        raise ValueError("videos is empty")
    model = model if model is not None else I3D.from_pretrained()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(videos), batch_size), desc=f"I3D {features}", disable=not progress):
            batch = prepare_videos(videos[i:i + batch_size], num_frames).to(device)
            logits, pool = model(batch)
            out.append((logits if features == "logits" else pool).double().cpu().numpy())
    return np.concatenate(out)


def fvd(generated: Tensor | Sequence[Tensor] | np.ndarray, reference: Tensor | Sequence[Tensor] | np.ndarray, *,
        features: str = "logits", model: I3D | None = None, num_frames: int = 16, batch_size: int = 8,
        progress: bool = True) -> float:
    """Fréchet video distance between two sets of videos (or of precomputed
    :func:`i3d_features` arrays): ``|μg − μr|² + tr(Σg + Σr − 2 (Σg^½ Σr Σg^½)^½)`` in float64,
    with the matrix square roots from symmetric eigendecompositions (stable for the singular
    covariances of small sets). Default features: the 400 logits, as the original FVD."""
    def stats(x) -> np.ndarray:
        if isinstance(x, np.ndarray):
            if x.ndim != 2:
                raise ValueError(f"precomputed features must be [N, D], got shape {x.shape}")
            return x.astype(np.float64)
        return i3d_features(x, features=features, model=model, num_frames=num_frames, batch_size=batch_size,
                            progress=progress)

    if model is None and not (isinstance(generated, np.ndarray) and isinstance(reference, np.ndarray)):
        model = I3D.from_pretrained()
    a, b = stats(generated), stats(reference)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FVD needs at least 2 videos in each set (a covariance)")
    return frechet_distance(a, b)


def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError("a and b must be tensors")
    if a.shape != b.shape or a.dim() not in (3, 4):
        raise ValueError(f"a and b must be frames of one shape, [C, H, W] or [T, C, H, W]; got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    return (a[None], b[None]) if a.dim() == 3 else (a, b)


def psnr(a: Tensor, b: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio per frame (dB, ``[T]``; inf for identical frames); ``data_range``
    is the span of the values (2 for [-1, 1])."""
    a, b = _pair(a, b)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def ssim(a: Tensor, b: Tensor, data_range: float = 2.0) -> Tensor:
    """Structural similarity per frame (``[T]``): Gaussian window 11×11, σ 1.5, K1 0.01, K2 0.03,
    population statistics, averaged over the channels and over the positions where the window
    fits in the frame (as scikit-image's ``structural_similarity(gaussian_weights=True)``)."""
    a, b = _pair(a, b)
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"ssim needs frames of at least 11×11, got {tuple(a.shape[-2:])}")
    t, c, h, w = a.shape
    g = _gaussian_window()
    kernel = (g[:, None] * g[None, :])[None, None]

    def blur(x: Tensor) -> Tensor:  # valid positions only, every channel apart
        return F.conv2d(x.reshape(t * c, 1, h, w), kernel).reshape(t, c, h - 10, w - 10)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)
