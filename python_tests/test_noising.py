"""Training states (docs/algorithm.md §3): structure against a per-video reference, exact noising, and the
statistics of roles, insertion times, presence and τ_g against their analytic laws.

Statistical tests use >= 10⁴ videos, fixed seeds and bounds of >= 4.5 standard errors (or
p > 1e-4 for Kolmogorov-Smirnov tests), so they are deterministic and fail only on a real bias.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from flowception_ext import PackedVideos
from flowception_ext.noising import (ROLE_CONTEXT, ROLE_FREE, ROLE_START, TASKS, NoisingConfig, TrainingState,
                                     make_training_state)
from flowception_ext.schedules import (CosineKappa, LinearKappa, LogitNormalTime, PolynomialKappa, UniformTime)

SCHEDULERS = [LinearKappa(), PolynomialKappa(2.0), PolynomialKappa(0.5), CosineKappa()]
MIXED = {"unconditional": 0.4, "image_to_video": 0.3, "interpolation": 0.3}
UNCOND, I2V, INTERP = range(3)
Z = 4.5  # standard errors allowed in statistical checks


def make_batch(lengths, frame_shape=(1, 1, 1), dtype=torch.float32, seed=0) -> PackedVideos:
    lengths = torch.as_tensor(lengths, dtype=torch.int64)
    cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    n = int(cu[-1])
    frames = torch.randn(n, *frame_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return PackedVideos(frames.to(dtype), cu, torch.rand(n), torch.zeros(n, dtype=torch.bool),
                        torch.zeros(n, dtype=torch.bool))  # input times/flags are ignored


def random_lengths(num_videos, lo, hi, seed=1):
    return torch.randint(lo, hi + 1, (num_videos,), generator=torch.Generator().manual_seed(seed))


def draw(videos, seed=0, **config) -> TrainingState:
    return make_training_state(videos, generator=torch.Generator().manual_seed(seed), config=NoisingConfig(**config))


def present_mask(state, n_clean):
    present = torch.zeros(n_clean, dtype=torch.bool)
    present[state.source_index] = True
    return present


# ---- config ----------------------------------------------------------------------------------


def test_config_json_roundtrip():
    cfg = NoisingConfig(tasks=MIXED, n_start=3, kappa=PolynomialKappa(1.5), time_distribution="uniform",
                        p_uncond=0.2, interpolation_p_last=1.0, interpolation_max_interior=4)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert NoisingConfig.from_dict(d) == cfg
    assert NoisingConfig.from_dict(NoisingConfig().to_dict()) == NoisingConfig()
    assert NoisingConfig().kappa == LinearKappa() and NoisingConfig().time_distribution == LogitNormalTime()
    assert NoisingConfig().n_start == 1 and NoisingConfig().p_uncond == 0.1


@pytest.mark.parametrize("kwargs, error, match", [
    ({"tasks": {"unconditional": 0.5}}, ValueError, "sum to 1"),
    ({"tasks": {"text_to_video": 1.0}}, ValueError, "unknown task"),
    ({"tasks": {"unconditional": 1.5, "interpolation": -0.5}}, ValueError, r"tasks\['interpolation'\]"),
    ({"tasks": [1.0]}, TypeError, "tasks must be a dict"),
    ({"n_start": 0}, ValueError, "n_start"),
    ({"n_start": 1.0}, ValueError, "n_start"),
    ({"p_uncond": 1.5}, ValueError, "p_uncond"),
    ({"interpolation_p_last": -0.1}, ValueError, "interpolation_p_last"),
    ({"interpolation_max_interior": -1}, ValueError, "interpolation_max_interior"),
    ({"kappa": "quadratic"}, ValueError, "unknown kappa"),
    ({"time_distribution": "beta"}, ValueError, "unknown time distribution"),
])
def test_config_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        NoisingConfig(**kwargs)


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown NoisingConfig fields"):
        NoisingConfig.from_dict({"n_starts": 2})


# ---- input validation --------------------------------------------------------------------------


def test_bad_videos():
    with pytest.raises(TypeError, match="PackedVideos"):
        make_training_state(torch.zeros(2, 1, 1, 1))
    empty_batch = PackedVideos(torch.zeros(0, 1, 1, 1), torch.zeros(1, dtype=torch.int64), torch.zeros(0),
                               torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one video"):
        make_training_state(empty_batch)
    with pytest.raises(ValueError, match=r"video\(s\) \[1, 3\]"):
        make_training_state(make_batch([2, 0, 3, 0]))
    bad = make_batch([2, 3])
    bad.frames[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        make_training_state(bad)
    wrong_cu = make_batch([2, 3]).replace(cu_seqlens=torch.tensor([0, 2, 4]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        make_training_state(wrong_cu)


# ---- structure against a per-video reference ---------------------------------------------------


def reference_targets(roles, t_ins, tau_g):
    """docs/algorithm.md §3 for one video, frame by frame: present, insertable, K, t, flowing."""
    n = len(roles)
    present = [tau_g - t >= 0 for t in t_ins]
    insertable = [r != ROLE_CONTEXT or (i + 1 < n and roles[i + 1] != ROLE_CONTEXT) for i, r in enumerate(roles)]
    counts = [0] * n
    for i in range(n):
        if present[i]:
            j = i + 1
            while j < n and not present[j]:
                counts[i] += 1
                j += 1
    t = [1.0 if r == ROLE_CONTEXT else min(max(tau_g - ti, 0.0), 1.0) for r, ti in zip(roles, t_ins)]
    flowing = [p and r != ROLE_CONTEXT and tau_g - ti < 1 for p, r, ti in zip(present, roles, t_ins)]
    return present, insertable, counts, t, flowing


@pytest.mark.parametrize("kappa, n_start", [(LinearKappa(), 1), (PolynomialKappa(2.0), 3), (CosineKappa(), 2)],
                         ids=["linear-1", "poly2-3", "cosine-2"])
def test_structure_matches_reference(kappa, n_start):
    videos = make_batch(random_lengths(1500, 1, 9))
    cfg = dict(tasks=MIXED, n_start=n_start, kappa=kappa, p_uncond=0.3)
    state = draw(videos, **cfg)
    inp = state.inputs
    assert inp.num_videos == videos.num_videos and inp.frame_shape == videos.frame_shape
    assert state.source_index.diff().gt(0).all()  # order kept
    torch.testing.assert_close(inp.video_index, videos.video_index[state.source_index], rtol=0, atol=0)
    present_all = present_mask(state, videos.num_frames)
    roles_v, t_ins_v = videos.split(state.roles.long()), videos.split(state.t_ins)
    p_idx = 0
    for b, (roles, t_ins) in enumerate(zip(roles_v, t_ins_v)):
        roles, t_ins, n = roles.tolist(), t_ins.tolist(), len(roles)
        tau_g, task = float(state.tau_g[b]), int(state.task[b])
        # Roles (docs/algorithm.md §3.1).
        ctx = [i for i, r in enumerate(roles) if r == ROLE_CONTEXT]
        assert roles[0] in (ROLE_START, ROLE_CONTEXT)
        if n == 1:
            assert task == UNCOND
        if task == UNCOND:
            assert ctx == []
        elif task == I2V:
            assert ctx == [0]
        else:
            interior = [i for i in ctx if 0 < i < n - 1]
            assert ctx[0] == 0 and len(interior) <= 2 and len(ctx) < n
            assert (n - 1 not in ctx) or n >= 3
        non_ctx_after_0 = sum(r != ROLE_CONTEXT for r in roles[1:])
        expected_start = (roles[0] != ROLE_CONTEXT) + min(n_start - 1, non_ctx_after_0)
        assert sum(r == ROLE_START for r in roles) == expected_start
        assert all((ti == 0) == (r != ROLE_FREE) for r, ti in zip(roles, t_ins))
        assert float(state.tau_max[b]) == max(t_ins) + 1
        # Presence, flags, counts, times and flowing frames.
        present, insertable, counts, t, flowing = reference_targets(roles, t_ins, tau_g)
        assert present == present_all[videos.cu_seqlens[b]:videos.cu_seqlens[b + 1]].tolist()
        assert present[0] and any(flowing), "first frame present, at least one flowing frame"
        keep = [i for i in range(n) if present[i]]
        rows = slice(p_idx, p_idx + len(keep))
        p_idx += len(keep)
        dropped = bool(state.cond_dropped[b])
        assert inp.insertable[rows].tolist() == [insertable[i] for i in keep]
        assert inp.is_context[rows].tolist() == [roles[i] == ROLE_CONTEXT and not dropped for i in keep]
        assert state.insert_counts[rows].tolist() == [counts[i] for i in keep]
        assert state.flowing[rows].tolist() == [flowing[i] for i in keep]
        torch.testing.assert_close(inp.times[rows], torch.tensor([t[i] for i in keep]), rtol=0, atol=1e-7)
        # K sums to the deleted frames; complete videos (τ_g >= 1) insert nothing.
        assert sum(counts) == n - len(keep)
        if tau_g >= 1:
            assert len(keep) == n and not any(counts)
    assert p_idx == inp.num_frames
    assert (state.insert_counts[~inp.insertable] == 0).all()


def test_single_frame_videos_are_unconditional():
    state = draw(make_batch([1] * 200), tasks={"image_to_video": 1.0})
    assert (state.task == UNCOND).all() and (state.roles == ROLE_START).all()
    assert state.flowing.all() and (state.insert_counts == 0).all() and state.inputs.insertable.all()
    assert (state.tau_g < 1).all()


# ---- exact noising -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-14), (torch.float32, 1e-5)])
def test_noisy_frames_and_targets(dtype, tol):
    videos = make_batch(random_lengths(500, 1, 8), frame_shape=(2, 3, 3), dtype=dtype)
    state = draw(videos, tasks=MIXED, p_uncond=0.0)
    x1 = videos.frames[state.source_index]
    ctx = state.inputs.is_context
    t = state.inputs.times.to(dtype).view(-1, 1, 1, 1)
    eps = x1 - state.velocity_target  # the target is X¹ − ε: recover ε
    torch.testing.assert_close(state.inputs.frames, t * x1 + (1 - t) * eps, rtol=0, atol=tol)
    # Context and terminal frames are exactly the clean frames; context targets are zero.
    clean = state.inputs.times == 1
    assert clean[ctx].all() and torch.equal(state.inputs.frames[clean], x1[clean])
    assert (state.velocity_target[ctx] == 0).all()
    e = eps[~ctx]
    assert abs(float(e.mean())) < 0.05 and abs(float(e.std()) - 1) < 0.05
    assert state.inputs.times.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_low_precision_frames():
    videos = make_batch(random_lengths(300, 1, 6), frame_shape=(2, 2, 2), dtype=torch.bfloat16)
    state = draw(videos, tasks=MIXED)
    assert state.inputs.frames.dtype == torch.bfloat16 and state.velocity_target.dtype == torch.bfloat16
    assert state.inputs.times.dtype == torch.float32
    assert torch.isfinite(state.inputs.frames.float()).all()


def test_determinism():
    videos = make_batch(random_lengths(200, 1, 8), frame_shape=(1, 2, 2))
    a, b, c = draw(videos, seed=5, tasks=MIXED), draw(videos, seed=5, tasks=MIXED), draw(videos, seed=6, tasks=MIXED)
    for name in ("velocity_target", "flowing", "insert_counts", "tau_g", "t_ins", "roles", "cond_dropped"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.inputs.frames, b.inputs.frames) and torch.equal(a.inputs.times, b.inputs.times)
    assert not torch.equal(a.tau_g, c.tau_g)


# ---- statistics --------------------------------------------------------------------------------


def kappa_np(kappa, x):
    return kappa.kappa(torch.as_tensor(x, dtype=torch.float64)).numpy()


def s_cdf(dist, x):
    x = np.asarray(x, dtype=np.float64)
    if isinstance(dist, UniformTime):
        return np.clip(x, 0, 1)
    with np.errstate(divide="ignore"):
        logit_normal = stats.norm.cdf((np.log(x) - np.log1p(-x) - dist.mean) / dist.std)
    return dist.uniform_fraction * np.clip(x, 0, 1) + (1 - dist.uniform_fraction) * logit_normal


def s_pdf(dist, x):
    x = np.asarray(x, dtype=np.float64)
    inside = (x > 0) & (x < 1)
    if isinstance(dist, UniformTime):
        return inside.astype(np.float64)
    xc = np.where(inside, x, 0.5)
    z = (np.log(xc) - np.log1p(-xc) - dist.mean) / dist.std
    q = dist.uniform_fraction
    return np.where(inside, q + (1 - q) * stats.norm.pdf(z) / (dist.std * xc * (1 - xc)), 0.0)


DISTS = [LogitNormalTime(), UniformTime()]


@pytest.mark.parametrize("kappa, dist", list(zip(SCHEDULERS, DISTS * 2)), ids=lambda x: str(x.to_dict()))
def test_presence_conditional_law(kappa, dist):
    """Given τ_g and τ_max = M + 1, the free frames other than the latest one are i.i.d. with law
    κ restricted to [0, M], so each is present with probability κ(min(τ_g, M)) / κ(M) and their
    count is binomial — exactly, for videos with a starting frame (s is never redrawn there).
    """
    videos = make_batch(random_lengths(10_000, 2, 12))
    state = draw(videos, tasks=MIXED, n_start=2, kappa=kappa, time_distribution=dist)
    vid = videos.video_index
    free = (state.roles == ROLE_FREE).long()
    k = torch.zeros(videos.num_videos, dtype=torch.long).index_add_(0, vid, free)
    present_free = torch.zeros_like(k).index_add_(0, vid, free * present_mask(state, videos.num_frames).long())
    has_start = torch.zeros_like(k).index_add_(0, vid, (state.roles == ROLE_START).long()) > 0
    assert has_start.all()
    g, m = state.tau_g.numpy(), state.tau_max.numpy() - 1
    use = (k >= 2).numpy()
    others = present_free.numpy() - (g >= m)  # the latest free frame is present iff τ_g >= M
    with np.errstate(invalid="ignore", divide="ignore"):  # M = 0 only where k = 0
        p = np.where(use, kappa_np(kappa, np.minimum(g, m)) / kappa_np(kappa, m), 0)
    n = k.numpy() - 1
    for sel in [use] + [use & (g >= lo) & (g < hi) for lo, hi in ((0, 0.4), (0.4, 0.8), (0.8, 1.2), (1.2, 2))]:
        mean, var = (n * p)[sel].sum(), (n * p * (1 - p))[sel].sum()
        assert sel.sum() > 500
        assert abs(others[sel].sum() - mean) <= Z * math.sqrt(var) + 1e-6, (others[sel].sum(), mean, math.sqrt(var))


def presence_given_tau_g(kappa, dist, k, g, grid=4000):
    """P(a free frame is present | τ_g = g) for a video with a starting frame and k free frames.

    τ_g = s (M + 1) with M the latest of the k insertion times (CDF κ(m)^k), so given M, τ_g has
    density w(M) = p_s(g / (M + 1)) / (M + 1); by exchangeability the answer is
    E[1{t_1 <= g} w(M)] / E[w(M)], where P(t_1 <= g, M <= m) = κ(min(m, g)) κ(m)^(k−1).
    It tends to κ(min(g, 1)) as k grows (M → 1), but differs for short videos.
    """
    m = np.linspace(0, 1, grid + 1)
    mid = 0.5 * (m[1:] + m[:-1])
    km = kappa_np(kappa, m)
    w = s_pdf(dist, g[:, None] / (mid[None] + 1)) / (mid[None] + 1)  # [G, grid]
    all_m = np.diff(km**k)
    a = kappa_np(kappa, np.minimum(m[None], g[:, None])) * km[None] ** (k - 1)
    return (w * np.diff(a, axis=1)).sum(1) / (w * all_m[None]).sum(1)


@pytest.mark.parametrize("kappa, dist, n", [(LinearKappa(), LogitNormalTime(), 3), (LinearKappa(), UniformTime(), 16),
                                             (CosineKappa(), UniformTime(), 3), (CosineKappa(), LogitNormalTime(), 16)],
                         ids=["linear-logit_normal-3", "linear-uniform-16", "cosine-uniform-3", "cosine-logit_normal-16"])
def test_presence_given_tau_g(kappa, dist, n):
    """Fraction of present non-start frames in bins of τ_g against its analytic value (all present
    for τ_g >= 1). The law of the per-video count is not binomial given τ_g alone (the frames
    share M), so the bound uses the empirical spread of the per-video residuals."""
    videos = make_batch(torch.full((10_000,), n))
    state = draw(videos, kappa=kappa, time_distribution=dist)
    free = (state.roles == ROLE_FREE).view(-1, n)
    present = present_mask(state, videos.num_frames).view(-1, n)
    count = (free & present).sum(1).double().numpy()
    g = state.tau_g.numpy()
    grid = np.linspace(1e-3, 1, 200)
    expected = (n - 1) * np.interp(g, grid, presence_given_tau_g(kappa, dist, n - 1, grid))
    expected[g >= 1] = n - 1
    assert (count[g >= 1] == n - 1).all()
    edges = np.quantile(g[g < 1], np.linspace(0, 1, 9))
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (g >= lo) & (g < hi)
        resid = count[sel] - expected[sel]
        assert abs(resid.sum()) < Z * math.sqrt((resid**2).sum()), (lo, hi, resid.mean())
    # The acceptance wording, κ(min(τ_g, 1)), is the long-video limit of this law.
    big = presence_given_tau_g(kappa, dist, 2000, grid)
    assert np.abs(big - kappa_np(kappa, grid)).max() < 5e-3


@pytest.mark.parametrize("kappa", SCHEDULERS, ids=lambda s: str(s.to_dict()))
def test_presence_fraction_is_kappa_of_tau_g(kappa):
    """The acceptance wording: in bins of τ_g, the fraction of present non-start frames is
    κ(min(τ_g, 1)), within a binomial bound — for 16-frame videos, where the exact law above is
    within 0.01 of κ (the allowance for that difference is computed, not guessed)."""
    n = 16
    videos = make_batch(torch.full((10_000,), n))
    state = draw(videos, kappa=kappa)
    free = (state.roles == ROLE_FREE).view(-1, n)
    present = present_mask(state, videos.num_frames).view(-1, n)
    frac = ((free & present).sum(1).double() / free.sum(1)).numpy()
    g = state.tau_g.numpy()
    grid = np.linspace(1e-3, 0.999, 300)
    allowance = np.abs(presence_given_tau_g(kappa, LogitNormalTime(), n - 1, grid) - kappa_np(kappa, grid)).max()
    assert allowance < 0.01
    assert (frac[g >= 1] == 1).all()
    edges = np.quantile(g[g < 1], np.linspace(0, 1, 11))
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (g >= lo) & (g < hi)
        p = kappa_np(kappa, g[sel]).mean()
        sigma = math.sqrt(p * (1 - p) / (sel.sum() * (n - 1)))
        assert abs(frac[sel].mean() - p) < Z * sigma + allowance, (lo, hi, frac[sel].mean(), p)


@pytest.mark.parametrize("kappa", SCHEDULERS, ids=lambda s: str(s.to_dict()))
def test_insertion_times_and_s_laws(kappa):
    """κ(t_ins) ~ U(0, 1) for free frames; s = τ_g / τ_max ~ the time distribution when no redraw
    can happen (videos with a starting frame)."""
    videos = make_batch(random_lengths(10_000, 1, 6))
    state = draw(videos, tasks={"unconditional": 1.0}, kappa=kappa)
    u = kappa_np(kappa, state.t_ins[state.roles == ROLE_FREE].numpy())
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    s = (state.tau_g / state.tau_max).numpy()
    assert stats.kstest(s_cdf(LogitNormalTime(), s), "uniform").pvalue > 1e-4


@pytest.mark.parametrize("dist", DISTS + [LogitNormalTime(uniform_fraction=0.5)], ids=lambda d: str(d.to_dict()))
def test_redraw_law(dist):
    """Image-to-video with n_start = 1 has no starting frame: s is redrawn until a frame flows. With
    one free frame (insertion time M) that means s ~ p_s conditioned on s >= M / (M + 1)."""
    videos = make_batch(torch.full((10_000,), 2))
    state = draw(videos, tasks={"image_to_video": 1.0}, time_distribution=dist)
    assert (state.roles.view(-1, 2)[:, 0] == ROLE_CONTEXT).all() and state.flowing.sum() == 10_000
    m = state.tau_max.numpy() - 1
    s = state.tau_g.numpy() / state.tau_max.numpy()
    c = s_cdf(dist, m / (m + 1))
    assert (s >= m / (m + 1)).all()
    assert stats.kstest((s_cdf(dist, s) - c) / (1 - c), "uniform").pvalue > 1e-4


def binomial_ok(hits, trials, p):
    return abs(hits - trials * p) < Z * math.sqrt(trials * p * (1 - p)) + 1e-9


def test_task_and_role_frequencies():
    lengths = random_lengths(20_000, 1, 10)
    videos = make_batch(lengths)
    cfg = dict(tasks=MIXED, n_start=2, interpolation_p_last=0.7, interpolation_max_interior=3)
    state = draw(videos, **cfg)
    long = (lengths >= 2).numpy()
    task = state.task.numpy()
    for i, name in enumerate(TASKS):
        assert binomial_ok((task[long] == i).sum(), long.sum(), MIXED[name])
    roles = videos.split(state.roles.long())
    last_ctx, trials, interior_counts, interior_pos = 0, 0, {}, []
    start_pos = []
    for b in np.flatnonzero(task == INTERP):
        r = roles[b].tolist()
        n = len(r)
        if n >= 3:
            trials += 1
            last_ctx += r[-1] == ROLE_CONTEXT
        if n == 10:
            interior = [i for i in range(1, n - 1) if r[i] == ROLE_CONTEXT]
            kmax = min(3, n - 2 - (r[-1] == ROLE_CONTEXT))
            interior_counts.setdefault(kmax, []).append(len(interior))
            interior_pos += interior
    for b in np.flatnonzero(task == UNCOND):
        r = roles[b].tolist()
        if len(r) == 10:
            start_pos += [i for i in range(1, 10) if r[i] == ROLE_START]
    assert binomial_ok(last_ctx, trials, 0.7)
    for kmax, counts in interior_counts.items():  # uniform on {0, ..., kmax}
        assert stats.chisquare(np.bincount(counts, minlength=kmax + 1)).pvalue > 1e-4
    assert stats.chisquare(np.bincount(interior_pos, minlength=9)[1:]).pvalue > 1e-4  # uniform positions
    assert stats.chisquare(np.bincount(start_pos, minlength=10)[1:]).pvalue > 1e-4


@pytest.mark.parametrize("p_uncond", [0.0, 0.25, 1.0])
def test_conditioning_dropout(p_uncond):
    videos = make_batch(random_lengths(10_000, 2, 6))
    state = draw(videos, tasks={"image_to_video": 0.5, "interpolation": 0.5}, p_uncond=p_uncond)
    dropped = state.cond_dropped
    assert binomial_ok(int(dropped.sum()), videos.num_videos, p_uncond)
    ctx_role = state.roles.long()[state.source_index] == ROLE_CONTEXT
    frame_dropped = dropped[state.inputs.video_index]
    assert torch.equal(state.inputs.is_context, ctx_role & ~frame_dropped)
    # Dropped context frames stay clean (t = 1), keep their flags and never flow.
    assert (state.inputs.times[ctx_role] == 1).all() and not state.flowing[ctx_role].any()
    rows = state.source_index[ctx_role]
    is_last = videos.position[rows] == videos.lengths[videos.video_index[rows]] - 1
    next_ctx = torch.zeros_like(is_last)
    next_ctx[~is_last] = state.roles.long()[rows[~is_last] + 1] == ROLE_CONTEXT
    assert torch.equal(state.inputs.insertable[ctx_role], ~is_last & ~next_ctx)
