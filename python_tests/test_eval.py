"""flowception_ext.eval: the ToyColoring checker and probes, the MovingShapes consistency checker and
motion metrics, and the statistics (Fréchet distance, bootstrap and paired intervals)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowception_ext.data import MovingShapes, ToyColoring, collate_videos
from flowception_ext.data.toy import RAMP, RING_COLS, RING_ROWS
from flowception_ext.eval import (FEATURES, bayes_clean_estimate, bootstrap_ci, check_manifold, check_manifold_batch, clipped_errors,
                                  consistency, drift_slope, error_curve, estimate, fit_stride_offsets,
                                  frame_ring_misfit, frechet_distance, is_consistent, is_on_manifold,
                                  paired_difference, ring_offsets, shape_changed, stride_aliased, standardiser, summarise,
                                  video_features, video_metrics)

# ---- ToyColoring ---------------------------------------------------------------------------


def test_toy_videos_on_manifold_with_every_stride():
    ds = ToyColoring(300, seed=1)
    checks = check_manifold_batch([ds[i] for i in range(len(ds))])
    assert all(c.on_manifold for c in checks), [c.reason for c in checks if not c.on_manifold][:3]
    assert {c.stride for c in checks} == {-3, -2, -1, 1, 2, 3}
    # Packed batches are checked video by video.
    packed = collate_videos([ds[i] for i in range(5)])
    assert all(c.on_manifold for c in check_manifold_batch(packed))


def test_toy_checker_tolerates_small_noise_only():
    ds = ToyColoring(50, seed=2)
    g = torch.Generator().manual_seed(0)
    for i in range(50):
        v = ds[i]
        assert is_on_manifold(v + (torch.rand(v.shape, generator=g) - 0.5) * 0.08)        # |noise| <= 0.04
        assert not is_on_manifold(v + torch.randn(v.shape, generator=g) * 0.3)


def test_frame_ring_misfit():
    ds = ToyColoring(20, seed=3)
    for i in range(len(ds)):
        v = ds[i]
        assert frame_ring_misfit(v).shape == (len(v),) and frame_ring_misfit(v).max() < 1e-6
        # Frames drawn from two videos follow the rules one by one (misfit 0) but not together.
        mixed = torch.cat([v[:3], ds[(i + 1) % len(ds)][:3]])
        assert frame_ring_misfit(mixed).max() < 1e-6 and not check_manifold(mixed).frames_ok
        bumped = v.clone()
        bumped[1, 0, 0, 1] += 0.5  # one border value of frame 1
        misfit = frame_ring_misfit(bumped)
        assert misfit[1] > 0.2 and np.delete(misfit, 1).max() < 1e-6
    with pytest.raises(ValueError, match=r"\[n, 3, 3, 3\]"):
        frame_ring_misfit(torch.zeros(2, 3, 4, 4))


def test_stride_aliased():
    v = ToyColoring(4, seed=1, allowed_lengths=(8,), strides=(1,), directions=(1,))[0]  # offsets o0 + k
    assert not stride_aliased(v) and check_manifold(v).frames_ok
    mixed = v[[0, 1, 6, 7, 4, 5, 2, 3]]  # steps 1, 5, 1, 5, ...: strides 1 and 5 (= -3) mixed
    assert stride_aliased(mixed) and "stride" in check_manifold(mixed).failed
    assert not stride_aliased(v[[0, 2, 1, 3, 5, 4, 6, 7]])  # steps 2, 7, 2, ...: broken, not aliased
    assert not stride_aliased(v[:1])  # no step at all
    with pytest.raises(ValueError, match=r"\[n, 3, 3, 3\]"):
        stride_aliased(torch.zeros(2, 3, 4, 4))


def test_ring_offsets_and_stride_fit():
    ds = ToyColoring(16, seed=5, allowed_lengths=(20,))
    g = torch.Generator().manual_seed(0)
    alone = pooled = bayes = 0
    for i in range(len(ds)):
        v = ds[i]
        truth = ring_offsets(v)
        assert check_manifold(v).stride == ((truth[1] - truth[0] + 4) % 8 - 4)  # the checker's reading
        np.testing.assert_array_equal(fit_stride_offsets(v), truth)
        noisy = v + 0.6 * torch.randn(v.shape, generator=g)
        alone += (ring_offsets(noisy) == truth).mean() / len(ds)
        pooled += (fit_stride_offsets(noisy) == truth).mean() / len(ds)
        t = 1 / 1.6  # noisy = X_t / t at this t
        bayes += (ring_offsets(bayes_clean_estimate(t * noisy, t).float()) == truth).mean() / len(ds)
    # Frame by frame the noise hides many offsets; one stride video fitted to all frames recovers
    # them, and so does the posterior mean.
    assert alone < 0.9 and pooled > 0.99 and bayes > 0.99
    # A fixed direction: the fit only returns allowed motions.
    offsets = fit_stride_offsets(ds[0] + 0.6 * torch.randn(ds[0].shape, generator=g), strides=(2,), directions=(-1,))
    assert set((np.diff(offsets) % 8).tolist()) == {6}
    for bad in (torch.zeros(0, 3, 3, 3), torch.zeros(2, 3, 4, 4), "video"):
        with pytest.raises(ValueError, match=r"\[n, 3, 3, 3\]"):
            ring_offsets(bad)
        with pytest.raises(ValueError, match=r"\[n, 3, 3, 3\]"):
            fit_stride_offsets(bad)
    for kwargs in ({"strides": ()}, {"strides": (0,)}, {"strides": (1.5,)}, {"directions": ()}, {"directions": (2,)}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            fit_stride_offsets(ds[0], **kwargs)



def test_bayes_clean_estimate_is_the_posterior_mean():
    """Against an importance-sampled posterior mean: the dataset's prior drawn directly,
    weighted by the likelihood of two noisy frames."""
    rng = np.random.default_rng(0)
    t, n, m = 0.3, 2, 400_000
    video = ToyColoring(4, seed=3)[1][:n]
    noisy = t * video + (1 - t) * torch.randn(video.shape, generator=torch.Generator().manual_seed(0))
    stride = rng.choice([1, 2, 3], m) * rng.choice([1, -1], m)
    offset0 = rng.integers(0, 8, m)
    c0, c1, centre = rng.uniform(-1, 1, (m, 3)), rng.uniform(-1, 1, (m, 3)), rng.uniform(-1, 1, (m, 3))
    keep = np.abs(c1 - c0).max(1) >= 1.0                            # the dataset's contrast rule
    stride, offset0, c0, c1, centre = stride[keep], offset0[keep], c0[keep], c1[keep], centre[keep]
    slot = (np.arange(8)[None, None] - (offset0[:, None] + stride[:, None] * np.arange(n))[..., None]) % 8
    drawn = np.empty((len(stride), n, 3, 3, 3))
    drawn[:, :, :, RING_ROWS, RING_COLS] = (c0[:, None, None] + (c1 - c0)[:, None, None] * RAMP[slot][..., None]
                                            ).transpose(0, 1, 3, 2)
    drawn[:, :, :, 1, 1] = centre[:, None]
    log_w = -((noisy.double().numpy()[None] - t * drawn) ** 2).sum((1, 2, 3, 4)) / (2 * (1 - t) ** 2)
    w = np.exp(log_w - log_w.max())
    sampled = np.einsum("m,mfchw->fchw", w / w.sum(), drawn)
    estimate_ = bayes_clean_estimate(noisy, t)
    assert estimate_.shape == video.shape and estimate_.dtype == torch.float64
    np.testing.assert_allclose(estimate_.numpy(), sampled, atol=0.01)
    # Pure noise says nothing: the prior's mean, 0 by symmetry. Little noise: close to the video.
    assert bayes_clean_estimate(noisy, 0.0).abs().max() < 1e-9
    clean = ToyColoring(4, seed=3)[2]
    almost = 0.9 * clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    assert (bayes_clean_estimate(almost, 0.9) - clean).abs().max() < 0.06


def test_bayes_clean_estimate_per_frame_times_and_errors():
    ds = ToyColoring(1, seed=5, allowed_lengths=(15,))
    g = torch.Generator().manual_seed(0)
    # A pure-noise frame among nearly clean ones is read from its neighbours.
    v = ds[0]
    times = torch.full((15,), 0.9)
    times[7] = 0.0
    noisy = times.view(-1, 1, 1, 1) * v + (1 - times.view(-1, 1, 1, 1)) * torch.randn(v.shape, generator=g)
    assert (bayes_clean_estimate(noisy, times)[7] - v[7]).abs().max() < 0.1
    for bad in ({"times": 0.95}, {"times": -0.1}, {"times": float("nan")}, {"strides": (0,)}, {"directions": (2,)},
                {"min_contrast": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            bayes_clean_estimate(noisy, **{"times": 0.4, **bad})
    with pytest.raises(ValueError, match=r"\[n, 3, 3, 3\]"):
        bayes_clean_estimate(torch.zeros(2, 3, 4, 4), 0.4)
    with pytest.raises(ValueError, match=r"times must be one time or one per frame \(\[15\]\)"):
        bayes_clean_estimate(noisy, torch.full((14,), 0.4))

def _shift(x: torch.Tensor) -> torch.Tensor:
    """Move values by 0.5, staying inside [-1, 1]."""
    return torch.where(x < 0, x + 0.5, x - 0.5)


def _ring_pixel_changed(v: torch.Tensor) -> torch.Tensor:
    v = v.clone()
    v[len(v) // 2, :, 0, 1] = _shift(v[len(v) // 2, :, 0, 1])
    return v


def _centre_jump(v: torch.Tensor) -> torch.Tensor:
    v = v.clone()
    v[len(v) // 2:, :, 1, 1] = _shift(v[len(v) // 2:, :, 1, 1])
    return v


@pytest.mark.parametrize("corruption, reasons", [
    (lambda v, g: v[torch.randperm(len(v), generator=g)], ("stride is not constant",)),
    (lambda v, g: torch.cat([v[:7], v[8:9], v[7:8], v[9:]]), ("stride is not constant",)),  # two frames swapped
    (lambda v, g: torch.cat([v[:7], v[8:]]), ("stride is not constant",)),                  # a frame dropped
    (lambda v, g: _centre_jump(v), ("centre",)),
    (lambda v, g: _ring_pixel_changed(v), ("gradient", "stride is not constant")),
], ids=["shuffled", "swapped", "dropped", "centre-jump", "ring-pixel"])
def test_toy_corrupted_videos_are_off_manifold(corruption, reasons):
    ds = ToyColoring(40, seed=5)
    g = torch.Generator().manual_seed(1)
    for i in range(len(ds)):
        result = check_manifold(corruption(ds[i], g))
        assert not result.frames_ok, (i, result)
        assert any(r in result.reason for r in reasons), result.reason


@pytest.mark.parametrize("motion", ["stride", "rotation"])
def test_toy_checker_lists_every_failed_rule(motion):
    ds = ToyColoring(8, seed=7, motion=motion)
    for i in range(len(ds)):
        v = ds[i]
        assert check_manifold(v, motion=motion).failed == ()
        # Out of range (every value scaled) and a jumping centre: both reported, range first.
        bad = v * 3  # contrast >= 1, so some value exceeds 1.5
        bad[len(v) // 2:, :, 1, 1] += 0.5
        result = check_manifold(bad, motion=motion)
        assert {"range", "centre"} <= set(result.failed) and result.failed[0] == "range"
        assert "values outside" in result.reason and not result.frames_ok and result.misfit < 1e-6
    # Shuffled frames break only the stride; a flat video has no contrast (nor a stride).
    shuffled = ds[0][torch.randperm(len(ds[0]), generator=torch.Generator().manual_seed(0))]
    if motion == "stride":
        assert check_manifold(shuffled).failed == ("stride",)
    assert "contrast" in check_manifold(torch.zeros(15, 3, 3, 3), motion=motion).failed
    assert check_manifold(torch.zeros(15, 3, 4, 4), motion=motion).failed == ("input",)


def test_toy_wrong_stride_direction_and_length_reported_separately():
    ds = ToyColoring(60, seed=6)
    for i in range(len(ds)):
        v = ds[i]
        stride = check_manifold(v).stride
        assert stride is not None and abs(stride) in (1, 2, 3)
        if abs(stride) in (1, 2):                        # every 4/|s|-th frame: stride 4 (half a turn)
            result = check_manifold(v[:: 4 // abs(stride)])
            assert not result.frames_ok and "stride -4 not allowed" in result.reason
        frozen = v[:1].expand(15, -1, -1, -1)            # stride 0
        assert "stride 0 not allowed" in check_manifold(frozen).reason
    clockwise = ToyColoring(40, seed=6, strides=(1,), directions=(1,))
    v = clockwise[0]
    assert check_manifold(v, **clockwise.rules).stride == 1 and check_manifold(v.flip(0)).stride == -1
    assert "stride -1 not allowed" in check_manifold(v.flip(0), **clockwise.rules).reason   # direction not in the data
    # Length: frames fine, length not allowed; is_on_manifold can ignore the length.
    result = check_manifold(v[:12])
    assert result.frames_ok and not result.length_ok and not result.on_manifold and "length 12" in result.reason
    assert not is_on_manifold(v[:12]) and is_on_manifold(v[:12], check_length=False)


def test_toy_checker_degenerate_inputs():
    assert "empty" in check_manifold(torch.zeros(0, 3, 3, 3)).reason
    assert "[n, 3, 3, 3]" in check_manifold(torch.zeros(15, 3, 4, 4)).reason
    assert "non-finite" in check_manifold(torch.full((15, 3, 3, 3), float("nan"))).reason
    flat = torch.zeros(15, 3, 3, 3)
    assert "contrast" in check_manifold(flat).reason


# ---- MovingShapes ----------------------------------------------------------------------------


def test_shapes_videos_are_consistent(shapes):
    _, videos = shapes
    results = [consistency(v) for v in videos]
    assert all(r.is_consistent for r in results), [float(r.errors.max()) for r in results]
    assert max(float(r.errors.max()) for r in results) < 0.15
    assert {r.num_shapes for r in results} == {1, 2, 3}
    assert all(r.errors.shape == (len(v),) and r.mass_change.shape == (len(v),) for r, v in zip(results, videos))
    g = torch.Generator().manual_seed(0)
    assert all(is_consistent(v + 0.05 * torch.randn(v.shape, generator=g)) for v in videos[:10])


@pytest.mark.parametrize("corruption", ["shuffle", "skip", "repeat", "teleport", "vanish"])
def test_shapes_inconsistent_videos_are_flagged(shapes, corruption):
    _, videos = shapes
    g = torch.Generator().manual_seed(0)
    tested = 0
    for v in videos:
        n = len(v)
        if n < 12:
            continue
        k = n // 2
        if corruption == "shuffle":
            bad = v[torch.randperm(n, generator=g)]
        elif corruption == "skip":                       # frames k..k+2 dropped
            bad = torch.cat([v[:k], v[k + 3:]])
        elif corruption == "repeat":                     # frame k shown twice
            bad = torch.cat([v[:k + 1], v[k:]])
        elif corruption == "teleport":                   # a shape jumps by 3 px and carries on from there
            c = int(v[0].amax((1, 2)).argmax())
            shift = 3 if (v[k:, c, :, -3:] == -1).all() else -3
            if (v[k:, c, :, :3] != -1).any() and shift == -3:
                continue                                 # the roll would wrap the shape around the border
            bad = v.clone()
            bad[k:, c] = torch.roll(v[k:, c], shifts=shift, dims=-1)
        else:                                            # a shape disappears
            bad = v.clone()
            c = int(bad[0].amax((1, 2)).argmax())
            bad[k:, c] = -1
        result = consistency(bad)
        assert not result.is_consistent, (corruption, n)
        if corruption in ("skip", "repeat", "teleport"):  # localised: the errors start at frame k
            assert int(torch.nonzero(result.errors > 0.3)[0]) in (k, k + 1)
        tested += 1
    assert tested >= 20


def test_shapes_checker_edge_cases(shapes):
    _, videos = shapes
    v = videos[0]
    assert consistency(v[:2]).is_consistent and consistency(v[:3]).errors.shape == (3,)
    empty = consistency(torch.full((5, 3, 32, 32), -1.0))
    assert empty.num_shapes == 0 and empty.is_consistent
    frozen = v[:1].expand(6, -1, -1, -1)
    assert consistency(frozen).is_consistent
    with pytest.raises(ValueError, match=r"\[n, 3, H, W\]"):
        consistency(torch.zeros(4, 1, 8, 8))


# ---- statistics ------------------------------------------------------------------------------


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
    assert set(metrics) == {"consistent", "median_error", "frac_frames_le_1px", "shape_changed", "length"}
    assert metrics["frac_frames_le_1px"].mean() > 0.95 and metrics["median_error"].max() < 0.5
    assert (metrics["shape_changed"] == 0).all()
    faded, recoloured = real[0].clone(), real[1].clone()
    faded[5:] = faded[5:].clamp(max=-0.1)                          # the shape below half intensity from frame 5
    recoloured[3] = recoloured[3].roll(1, dims=0)                  # frame 3 in another colour channel
    assert video_metrics([faded, recoloured])["shape_changed"].tolist() == [1.0, 1.0]
    assert (clipped_errors(faded)[5:] == 16.0).all()              # which the error counts as a missing shape
    with pytest.raises(ValueError, match="video must be"):
        shape_changed(real[0][:, :2])
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
