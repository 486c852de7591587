"""flowception_ext.eval: the statistics (Fréchet distance, bootstrap and paired intervals) and the
MovingShapes motion metrics. The toys' checkers are tested with their datasets in test_data.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowception_ext.data import MovingShapes
from flowception_ext.eval import (FEATURES, bootstrap_ci, clipped_errors, drift_slope, error_curve, estimate,
                                  frechet_distance, paired_difference, standardiser, summarise, video_features,
                                  video_metrics)


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # Gaussians with diagonal covariances: |Δμ|² + Σ (σa − σb)².
    b = rng.normal(size=(4000, 3)) * np.array([1.0, 2.0, 0.5]) + np.array([1.0, 0.0, -2.0])
    exact = 1 + 4 + (1 - 2) ** 2 + (1 - 0.5) ** 2
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.08)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)  # symmetric
    # One feature (1-D covariances) and rank-deficient covariances stay finite and >= 0.
    assert frechet_distance(a[:, :1], b[:, :1]) == pytest.approx(1 + 0, abs=0.1)
    assert frechet_distance(np.zeros((10, 2)), np.zeros((10, 2))) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="finite"):
        frechet_distance(np.full((3, 2), np.nan), a[:3, :2])


def test_bootstrap_and_paired_intervals():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 1.0, size=400)
    lo, hi = bootstrap_ci(lambda i: x[i].mean(), len(x), 500, np.random.default_rng(2))
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 / math.sqrt(400), rel=0.25)
    assert all(math.isnan(v) for v in bootstrap_ci(lambda i: math.nan, 5, 10, np.random.default_rng(0)))
    # Paired: a shared per-item effect cancels, so the interval is narrow around the true shift.
    shared = rng.normal(0, 5, size=300)
    diff = paired_difference(shared + 1.0 + rng.normal(0, 0.1, 300), shared, 300, seed=0)
    assert diff["value"] == pytest.approx(1.0, abs=0.05) and diff["ci95"][1] - diff["ci95"][0] < 0.1
    assert estimate(2, (1, 3)) == {"value": 2.0, "ci95": [1.0, 3.0]}
    norm = standardiser(np.array([[0.0, 5.0], [2.0, 5.0]]))
    np.testing.assert_allclose(norm(np.array([[1.0, 5.0]])), [[0.0, 0.0]])  # constant features keep unit scale


def test_shapes_metrics_score_real_videos_well_and_broken_ones_badly():
    ds = MovingShapes(num_videos=12, seed=0, size=16, min_length=8, max_length=12, max_shapes=1)
    real = [ds[i] for i in range(len(ds))]
    metrics = video_metrics(real)
    assert set(metrics) == {"consistent", "median_error", "frac_frames_le_1px", "length"}
    assert metrics["frac_frames_le_1px"].mean() > 0.95 and metrics["median_error"].max() < 0.5
    shuffled = [v[torch.randperm(v.shape[0], generator=torch.Generator().manual_seed(i))] for i, v in enumerate(real)]
    assert video_metrics(shuffled)["median_error"].mean() > metrics["median_error"].mean() + 0.5
    assert clipped_errors(real[0][:2]).tolist() == [16.0, 16.0]  # too short to check: counted as failures
    features = np.stack([video_features(v) for v in real])
    assert features.shape == (12, len(FEATURES)) and (features[:, 0] == 1).all()  # one shape each
    summary = summarise(metrics, features, features, reps=50, seed=0)
    assert summary["frechet"]["value"] == pytest.approx(0.0, abs=1e-6)
    curve = error_curve(real, 12, reps=20, seed=0)
    assert curve["videos"][0] == 12 and curve["videos"][11] == sum(v.shape[0] == 12 for v in real)
    assert abs(drift_slope(real, reps=20, seed=0)["value"]) < 0.05
