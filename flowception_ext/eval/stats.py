"""Statistics for comparing generated and real videos: the Fréchet distance of fitted
Gaussians, percentile-bootstrap intervals, and paired differences over the same items."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = ["bootstrap_ci", "estimate", "frechet_distance", "paired_difference", "standardiser", "summarise"]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b``:
    ``|μa − μb|² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½)``."""
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("frechet_distance needs finite features")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * _sqrt_spectrum(vals)) @ vecs.T
    cross = _sqrt_spectrum(np.linalg.eigvalsh(root_a @ cov_b @ root_a))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross.sum())


def _sqrt_spectrum(vals: np.ndarray) -> np.ndarray:
    """Square roots of a PSD matrix's eigenvalues, with those at rounding level (below
    ``n · eps · λ_max``) set to 0: the covariances of fewer samples than dimensions are singular,
    and the square roots of their ±1e-13 null eigenvalues would add up to a visible error."""
    tol = max(float(vals.max(initial=0.0)), 0.0) * len(vals) * np.finfo(np.float64).eps
    return np.sqrt(np.where(vals > tol, vals, 0.0))


def standardiser(real: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Map features to units of the real videos' spread (constant features keep unit scale)."""
    mean, std = real.mean(0), real.std(0)
    std = np.where(std > 1e-9, std, 1.0)
    return lambda f: (f - mean) / std


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, reps: int, rng: np.random.Generator,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over ``n`` items resampled with replacement."""
    values = np.array([stat(rng.integers(0, n, n)) for _ in range(reps)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def estimate(value: float, ci: tuple[float, float]) -> dict:
    """A figure and its interval, as the experiments' JSON stores it: ``{"value", "ci95": [lo, hi]}``."""
    return {"value": float(value), "ci95": [float(ci[0]), float(ci[1])]}


def summarise(per_video: dict[str, np.ndarray], features: np.ndarray, real_features: np.ndarray,
              reps: int, seed: int) -> dict[str, dict]:
    """Mean of each per-video metric and the Fréchet distance to the real features, each with a CI."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, values in per_video.items():
        out[name] = estimate(values.mean(), bootstrap_ci(lambda i: values[i].mean(), len(values), reps, rng))
    norm = standardiser(real_features)
    gen, real = norm(features), norm(real_features)
    value = frechet_distance(gen, real)
    draws = [frechet_distance(gen[rng.integers(0, len(gen), len(gen))], real[rng.integers(0, len(real), len(real))])
             for _ in range(reps)]
    out["frechet"] = estimate(value, (float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))))
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, reps: int, seed: int) -> dict:
    """Mean of ``a − b`` over the same videos, with a paired bootstrap interval."""
    diff = a - b
    rng = np.random.default_rng(seed)
    return estimate(diff.mean(), bootstrap_ci(lambda i: diff[i].mean(), len(diff), reps, rng))
