"""Checkers and probes of the ToyColoring toy (:class:`~flowception_ext.data.ToyColoring`).

:func:`check_manifold` says whether a video follows the toy's rules, rule by rule; the probes
read what a (noisy) video says about its ring offsets, frame by frame (:func:`ring_offsets`) or
pooled over the frames (:func:`fit_stride_offsets`); :func:`bayes_clean_estimate` is the best
clean-frame estimate any denoiser trained with a squared loss can reach, the yardstick for a
network's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.toy import RAMP, RING_COLS, RING_ROWS, TOY_LENGTHS, TOY_STRIDES
from ..packing import PackedVideos

__all__ = ["MANIFOLD_RULES", "ManifoldCheck", "bayes_clean_estimate", "check_manifold", "check_manifold_batch",
           "fit_stride_offsets", "frame_ring_misfit", "is_on_manifold", "ring_offsets", "stride_aliased"]

# The frame rules of check_manifold, in the order its ``reason`` reports them.
MANIFOLD_RULES = ("range", "gradient", "contrast", "centre", "stride")


@dataclass(frozen=True)
class ManifoldCheck:
    """Verdict of :func:`check_manifold` on one video.

    Attributes:
        frames_ok: the frames follow the rules (gradient, rotation, centre), whatever the length.
        length_ok: the length is an allowed one.
        reason: why the video is off the manifold ("" if it is on it): the first failed frame
            rule in the order of :func:`check_manifold`, else the length.
        stride: signed rotation per frame (+ clockwise) if it is constant, else None; with
            ``motion="rotation"``, the direction (±1) of the best fit.
        failed: every frame rule the video breaks, each checked on its own: ``"input"`` (not a
            finite ``[n, 3, 3, 3]`` video; nothing else is checked), else those of
            ``MANIFOLD_RULES`` = ``("range", "gradient", "contrast", "centre", "stride")``, in that
            order (see :func:`check_manifold`). A model can then be scored rule by rule, which
            ``reason`` alone hides.
        misfit: the largest distance of a border value from the fitted exact video (the
            ``"gradient"`` rule's measure; None for bad input).
    """

    frames_ok: bool
    length_ok: bool
    reason: str
    stride: int | None = None
    failed: tuple[str, ...] = ()
    misfit: float | None = None

    @property
    def on_manifold(self) -> bool:
        return self.frames_ok and self.length_ok


def check_manifold(
    video: Tensor,
    atol: float = 0.1,
    min_contrast: float = 0.5,
    allowed_lengths: Sequence[int] = TOY_LENGTHS,
    strides: Sequence[int] = TOY_STRIDES,
    directions: Sequence[int] = (1, -1),
    motion: str = "stride",
) -> ManifoldCheck:
    """Check a ``[n, 3, 3, 3]`` video against the ToyColoring rules (``motion="rotation"``:
    see :func:`_rotation_failures`).

    Tolerance: a video passes the frame rules iff every pixel lies within ``atol`` (pixel units,
    values in ``[-1, 1]``; the default 0.1 is 5% of the range) of an exact toy video whose
    gradient and centre are the least-squares fits to it. Concretely:

    1. ``"range"``: values lie in ``[-1 - atol, 1 + atol]``;
    2. ``"gradient"``: each frame's ring is un-rotated by the offset that best fits a linear ramp; all frames'
       un-rotated rings must match one common linear ramp ``c0 + (c1 - c0) k / 7`` within ``atol``;
    3. ``"contrast"``: the ramp has contrast ``max_c |c1 - c0| >= min_contrast`` (else its rotation is invisible;
       the dataset draws >= 1.0). A wrong offset misfits by >= 0.46 * contrast, so offsets are
       unambiguous whenever ``atol < 0.46 * min_contrast``;
    4. ``"centre"``: the centre stays within ``atol`` of its mean;
    5. ``"stride"``: the offset moves by the same signed stride between every two consecutive frames, with
       ``|stride|`` in ``strides`` and its sign in ``directions``.

    Every rule is checked: ``failed`` names all that fail, ``reason`` describes the first. The
    length check (``n`` in ``allowed_lengths``) is reported separately in ``length_ok``, so
    sample quality and length modelling can be scored apart.
    """
    n = video.shape[0] if isinstance(video, Tensor) and video.dim() == 4 else None
    length_ok = n in set(allowed_lengths)
    length_reason = "" if length_ok else f"length {n} not in {tuple(allowed_lengths)}"

    def bad_input(reason: str) -> ManifoldCheck:
        return ManifoldCheck(False, length_ok, reason, None, ("input",))

    if not isinstance(video, Tensor) or video.dim() != 4 or tuple(video.shape[1:]) != (3, 3, 3):
        shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
        return bad_input(f"expected a [n, 3, 3, 3] video, got {shape}")
    if video.shape[0] == 0:
        return bad_input("empty video")
    v = video.detach().cpu().double().numpy()
    if not np.isfinite(v).all():
        return bad_input("non-finite pixels")

    failures: list[tuple[str, str]] = []  # (rule, reason), sorted into MANIFOLD_RULES order below
    if np.abs(v).max() > 1 + atol:
        failures.append(("range", f"values outside [-1, 1] by more than atol={atol} (max |x| = {np.abs(v).max():.3f})"))
    centre = v[:, :, 1, 1]
    centre_dev = np.abs(centre - centre.mean(0)).max()
    if centre_dev > atol:
        failures.append(("centre", f"centre pixel changes by {centre_dev:.3f} > atol={atol}"))
    ring = v[:, :, RING_ROWS, RING_COLS].transpose(0, 2, 1)                        # (n, 8, 3)
    stride = None
    if motion == "rotation":
        stride, misfit = _rotation_failures(ring, atol, min_contrast, directions, failures)
    else:
        offsets, unrotated = _unrotate(ring)
        mean_ring = unrotated.mean(0)                                               # (8, 3)
        misfit = np.abs(unrotated - (mean_ring - _ramp_residual(mean_ring))).max()  # vs the fitted ramp
        if misfit > atol:
            failures.append(("gradient", f"border is not one rotating linear gradient (max misfit {misfit:.3f} > atol={atol})"))
        contrast = np.abs(_ramp_slope(mean_ring)).max()
        if contrast < min_contrast:
            failures.append(("contrast", f"gradient contrast {contrast:.3f} < min_contrast={min_contrast}: rotation not identifiable"))
        steps = (np.diff(offsets) + 4) % 8 - 4                                      # signed, in [-4, 3]
        if (steps != steps[:1]).any():
            failures.append(("stride", f"rotation stride is not constant: {steps.tolist()}"))
        elif len(steps):
            stride = int(steps[0])
            if abs(stride) not in set(strides) or np.sign(stride) not in set(directions):
                failures.append(("stride", f"rotation stride {stride} not allowed (strides {tuple(strides)}, "
                                           f"directions {tuple(directions)})"))
    failures.sort(key=lambda failure: MANIFOLD_RULES.index(failure[0]))
    reason = failures[0][1] if failures else length_reason
    return ManifoldCheck(not failures, length_ok, reason, stride, tuple(rule for rule, _ in failures), float(misfit))


def check_manifold_batch(videos: PackedVideos | Sequence[Tensor], **kwargs) -> list[ManifoldCheck]:
    """:func:`check_manifold` on each video of a list or a :class:`PackedVideos` (same keywords)."""
    if isinstance(videos, PackedVideos):
        videos = videos.to_list()
    return [check_manifold(v, **kwargs) for v in videos]


def is_on_manifold(video: Tensor, atol: float = 0.1, check_length: bool = True, **kwargs) -> bool:
    """True iff ``video`` follows the ToyColoring rules (:func:`check_manifold`, same keywords);
    with ``check_length=False`` any length is accepted (sample quality alone)."""
    result = check_manifold(video, atol=atol, **kwargs)
    return result.on_manifold if check_length else result.frames_ok


def frame_ring_misfit(video: Tensor) -> np.ndarray:
    """Per frame of a ``[n, 3, 3, 3]`` video, the largest distance of a border value from the
    linear gradient that best fits that frame alone (any ring offset): 0 for the frames of an
    exact toy video. The checker's misfit is measured against one gradient common to all
    frames, so it is at least the largest of these; the gap between the two is drift between
    frames (stride motion)."""
    _, unrotated = _unrotate(_ring(video))
    return np.abs(_ramp_residual(unrotated)).max(axis=(1, 2))


def ring_offsets(video: Tensor) -> np.ndarray:
    """Per frame of a ``[n, 3, 3, 3]`` video, the ring slot of colour ``c0`` in the linear
    gradient that best fits that frame alone (least squares), as the checker reads it: ``(n,)``."""
    return _unrotate(_ring(video))[0]


def stride_aliased(video: Tensor) -> bool:
    """True iff the ring offset of a ``[n, 3, 3, 3]`` video (:func:`ring_offsets`) moves by more
    than one step size between consecutive frames, all steps agreeing modulo 4: strides ``s`` and
    ``s + 4`` mixed. On the 8-pixel ring they agree on every other frame, so a network that reads
    frames two apart cannot tell them apart; this names that failure of the ``"stride"`` rule."""
    steps = np.diff(ring_offsets(video)) % 8
    return len(set(steps.tolist())) > 1 and len(set((steps % 4).tolist())) == 1


def fit_stride_offsets(video: Tensor, strides: Sequence[int] = TOY_STRIDES,
                       directions: Sequence[int] = (1, -1)) -> np.ndarray:
    """Ring offsets ``(n,)`` of the exact stride-motion video that best fits ``video`` in least
    squares, over every start slot and allowed signed stride, with least-squares end colours.
    Unlike :func:`ring_offsets` it pools all frames, so on a noisy video it shows how much the
    frames together say about each frame's offset."""
    if not strides or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in strides):
        raise ValueError(f"strides must be positive integers (at least one), got {strides}")
    if not directions or not set(directions) <= {1, -1}:
        raise ValueError(f"directions must be a non-empty subset of (1, -1), got {directions}")
    ring = _ring(video)                                                         # (n, 8, 3)
    n = ring.shape[0]
    candidates = np.array([(o0 + d * s * np.arange(n)) % 8
                           for s in strides for d in directions for o0 in range(8)])   # (G, n)
    k = (np.arange(8)[None, None, :] - candidates[..., None]) % 8              # (G, n, 8) gradient slot
    residual = _two_colour_fit(RAMP[k].reshape(len(candidates), -1), ring)[1]  # (G, 8n, 3)
    return candidates[(residual ** 2).sum(axis=(1, 2)).argmin()]


# The midpoint rule on which bayes_clean_estimate integrates over the uniform prior of each colour.
_COLOUR_GRID = (np.arange(100) + 0.5) / 50 - 1  # the midpoints of 100 equal cells


def bayes_clean_estimate(noisy: Tensor, times: Tensor | float, strides: Sequence[int] = TOY_STRIDES,
                         directions: Sequence[int] = (1, -1), min_contrast: float = 1.0) -> Tensor:
    """The posterior mean ``E[X¹ | X_t]`` of a stride-motion ToyColoring video of known length,
    from its noisy frames ``X_t = t X¹ + (1 − t) ε``, ``ε ~ N(0, I)``: the clean-frame estimate
    that minimises the expected squared error, so no network trained with that loss can beat it.

    The prior is the dataset's (:class:`~flowception_ext.data.ToyColoring` with these
    ``strides``, ``directions`` and ``min_contrast``): a uniform start slot and signed stride, end
    colours uniform in ``[-1, 1]³`` with ``max_c |c1 − c0| ≥ min_contrast``, a uniform centre. The
    motion hypotheses are summed exactly and the colours integrated by a midpoint rule of 100
    cells per channel, accurate to about 0.002 while the noise is wider than a cell (``t ≤ 0.9``).

    Args:
        noisy: ``[n, 3, 3, 3]`` noisy frames.
        times: each frame's time ``t`` in ``[0, 0.9]`` (``[n]``), or one for all frames; a frame at
            ``t = 0`` is pure noise and tells nothing.

    Returns:
        ``[n, 3, 3, 3]`` float64 estimate.
    """
    x = _ring(noisy)                                                             # (n, 8, 3)
    n = x.shape[0]
    t = np.asarray(times.detach().cpu() if isinstance(times, Tensor) else times, dtype=float)
    if t.shape not in ((), (n,)):
        raise ValueError(f"times must be one time or one per frame ([{n}]), got shape {tuple(t.shape)}")
    t = np.broadcast_to(t, (n,))
    if not np.isfinite(t).all() or (t < 0).any() or (t > 0.9).any():
        raise ValueError(f"times must be in [0, 0.9] (the grid's range of accuracy), got {np.unique(t).tolist()}")
    if not strides or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in strides):
        raise ValueError(f"strides must be positive integers (at least one), got {strides}")
    if not directions or not set(directions) <= {1, -1}:
        raise ValueError(f"directions must be a non-empty subset of (1, -1), got {directions}")
    if not 0 < min_contrast <= 2:
        raise ValueError(f"min_contrast must be in (0, 2], got {min_contrast}")
    # A pixel of frame f with clean value μ: log-likelihood −(x − t μ)² / (2 (1 − t)²) = −a μ²/2 + b μ + const.
    a = t ** 2 / (1 - t) ** 2                                                    # (n,) precision
    b = x * (t / (1 - t) ** 2)[:, None, None]                                    # (n, 8, 3)
    hypotheses = np.array([(o0 + d * s * np.arange(n)) % 8 for s in strides for d in directions for o0 in range(8)])
    w = RAMP[(np.arange(8)[None, None, :] - hypotheses[..., None]) % 8]          # (H, n, 8) weight of c1
    # Each hypothesis is linear in (c0, c1): ring = (1 − w) c0 + w c1. Its quadratic and linear terms:
    aa = np.stack([np.einsum("f,hfk->h", a, (1 - w) ** 2), np.einsum("f,hfk->h", a, (1 - w) * w),
                   np.einsum("f,hfk->h", a, w ** 2)], -1)                        # (H, 3)
    b0, b1 = np.einsum("hfk,fkc->hc", 1 - w, b), np.einsum("hfk,fkc->hc", w, b)  # (H, 3 channels)
    c0, c1 = (g.ravel() for g in np.meshgrid(_COLOUR_GRID, _COLOUR_GRID, indexing="ij"))    # (G,)
    log_l = (c0[None, :, None] * b0[:, None] + c1[None, :, None] * b1[:, None]
             - 0.5 * (aa[:, None, 0:1] * c0[None, :, None] ** 2 + 2 * aa[:, None, 1:2] * (c0 * c1)[None, :, None]
                      + aa[:, None, 2:3] * c1[None, :, None] ** 2))              # (H, G, 3)
    shift = log_l.max(1, keepdims=True)
    lik = np.exp(log_l - shift)
    # The pairs the contrast rule excludes (one exactly at it is allowed; the margin keeps rounding symmetric).
    low = (np.abs(c1 - c0) < min_contrast - 1e-9)[None, :, None]
    s_all, s_low = lik.sum(1), (lik * low).sum(1)                                # (H, 3)
    # Over the three channels the prior excludes only the pairs that are low in every channel.
    z = np.maximum(s_all.prod(-1) - s_low.prod(-1), 1e-300)                      # (H,)

    def others(sums: np.ndarray) -> np.ndarray:  # (H, 3): per channel, the product over the other two
        return np.stack([np.delete(sums, ch, -1).prod(-1) for ch in range(3)], -1)

    log_z = np.log(z) + shift[:, 0].sum(-1)
    posterior = np.exp(log_z - log_z.max())
    posterior /= posterior.sum()
    means = []
    for g in (c0, c1):
        m_all, m_low = (lik * g[None, :, None]).sum(1), (lik * (g[:, None] * low[0])[None]).sum(1)      # (H, 3)
        means.append((m_all * others(s_all) - m_low * others(s_low)) / z[:, None])  # (H, 3)
    ring = np.einsum("h,hfk,hc->fkc", posterior, 1 - w, means[0]) + np.einsum("h,hfk,hc->fkc", posterior, w, means[1])
    # The centre: uniform prior per channel, the same likelihood from every frame's centre pixel.
    bc = (noisy.detach().cpu().double().numpy()[:, :, 1, 1] * (t / (1 - t) ** 2)[:, None]).sum(0)    # (3,)
    log_c = _COLOUR_GRID[:, None] * bc[None] - 0.5 * a.sum() * _COLOUR_GRID[:, None] ** 2          # (grid, 3)
    pc = np.exp(log_c - log_c.max(0))
    centre = (pc * _COLOUR_GRID[:, None]).sum(0) / pc.sum(0)
    out = torch.empty(n, 3, 3, 3, dtype=torch.float64)
    out[:, :, RING_ROWS, RING_COLS] = torch.from_numpy(ring.transpose(0, 2, 1).copy())
    out[:, :, 1, 1] = torch.from_numpy(centre)[None]
    return out


def _ring(video: Tensor) -> np.ndarray:
    """The border of a ``[n, 3, 3, 3]`` video, clockwise: ``(n, 8, 3)`` float64."""
    if not isinstance(video, Tensor) or video.dim() != 4 or tuple(video.shape[1:]) != (3, 3, 3) or not len(video):
        got = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"video must be a non-empty [n, 3, 3, 3] tensor, got {got}")
    return video.detach().cpu().double().numpy()[:, :, RING_ROWS, RING_COLS].transpose(0, 2, 1)


def _unrotate(ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame of ``ring`` ``(n, 8, 3)``, the ring offset whose rotation best fits a linear
    ramp (least squares), and the ring rotated back by it: ``(n,)``, ``(n, 8, 3)``."""
    # Every rotation of every frame: rolled[f, o, k] = ring[f, (k + o) % 8].
    rolled = ring[:, (np.arange(8)[:, None] + np.arange(8)[None, :]) % 8]      # (n, 8 o, 8 k, 3)
    offsets = (_ramp_residual(rolled) ** 2).sum(axis=(2, 3)).argmin(1)        # (n,) best-fitting offset
    return offsets, rolled[np.arange(len(offsets)), offsets]


def _ramp_slope(y: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``y[..., k, c]`` against the ramp weights ``k / 7`` (= c1 - c0)."""
    w = RAMP - RAMP.mean()
    return np.einsum("k,...kc->...c", w, y) / (w @ w)


def _ramp_residual(y: np.ndarray) -> np.ndarray:
    """``y[..., k, c]`` minus its least-squares linear fit in ``k / 7``."""
    w = (RAMP - RAMP.mean())[:, None]
    return y - y.mean(-2, keepdims=True) - _ramp_slope(y)[..., None, :] * w


def _two_colour_fit(weights: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares end colours of ``G`` candidate videos whose ring values are
    ``c0 + (c1 - c0) * weights[g]`` (``weights`` ``(G, 8n)``, in ``ring``'s ``(n, 8)`` order):
    the colours ``(G, 2, 3)`` (``c0``, ``c1``) and the residuals ``(G, 8n, 3)``."""
    a = np.stack([1 - weights, weights], -1)                                     # (G, 8n, 2)
    y = ring.reshape(-1, 3)                                                      # (8n, 3)
    coef = np.linalg.solve(np.einsum("gri,grj->gij", a, a) + 1e-12 * np.eye(2), np.einsum("gri,rc->gic", a, y))
    return coef, np.einsum("gri,gic->grc", a, coef) - y


def _rotation_failures(ring: np.ndarray, atol: float, min_contrast: float, directions: Sequence[int],
                       failures: list[tuple[str, str]]) -> tuple[int, float]:
    """``motion="rotation"``: every ring value within ``atol`` of the best exact video that turns
    once over its ``n`` frames (speed ``8/n``), found by a search over the start position and the
    direction with least-squares end colours (a 1/64-pixel grid, refined to 1/4096). Appends the
    failed rules to ``failures``; returns the direction of the best fit and its misfit."""
    n = ring.shape[0]

    def fit(phases: np.ndarray, signs: np.ndarray):
        offsets = phases[:, None] + signs[:, None] * 8.0 * np.arange(n)[None, :] / n   # (G, n)
        u = ((np.arange(8)[None, None, :] - offsets[..., None]) % 8) / 8                 # (G, n, 8)
        coef, residual = _two_colour_fit(u.reshape(len(phases), -1), ring)
        return np.abs(residual).max(axis=(1, 2)), coef

    signs = np.array([d for d in (1, -1) if d in set(directions)], dtype=float)
    grid = np.arange(0, 8, 1 / 64)
    phases, sgn = np.repeat(grid, len(signs)), np.tile(signs, len(grid))
    err, _ = fit(phases, sgn)
    best = int(err.argmin())
    fine = phases[best] + np.arange(-1 / 64, 1 / 64, 1 / 4096)
    err, coef = fit(fine, np.full(len(fine), sgn[best]))
    best_fine = int(err.argmin())
    if err[best_fine] > atol:
        failures.append(("gradient", f"border is not a gradient turning once over {n} frames "
                                     f"(max misfit {err[best_fine]:.3f} > atol={atol})"))
    c0, c1 = coef[best_fine]
    if np.abs(c1 - c0).max() < min_contrast:
        failures.append(("contrast", f"gradient contrast {np.abs(c1 - c0).max():.3f} < min_contrast={min_contrast}"))
    return int(sgn[best]), float(err[best_fine])
