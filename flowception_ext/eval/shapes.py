"""Evaluation of MovingShapes-like videos (:class:`~flowception_ext.data.MovingShapes`): the
physical-consistency checker, per-video motion statistics, and error curves over frame indices.

Metrics, per generated video (:func:`video_metrics`):

* ``consistent``: the checker's strict verdict (:func:`consistency`: every frame within 0.3 px of
  the constant-velocity prediction and masses within 25 %);
* ``median_error``: the median over frames of the checker's per-frame prediction error in pixels,
  with missing shapes (``inf``) and larger errors clipped to the frame width
  (:func:`clipped_errors`); videos of fewer than 3 frames cannot be checked and count as failures;
* ``frac_frames_le_1px``: the fraction of frames whose error is at most 1 px;
* ``shape_changed``: 1 if the colour channels holding a solid shape are not the same in every
  frame (:func:`shape_changed`: a shape faded away or a new one appeared), else 0. The errors
  count the frames around such a change at the cap; this counts the videos where it happens;
* ``length``.

:func:`video_features` gives the per-video motion statistics (:data:`FEATURES`) that a Fréchet
distance (:func:`flowception_ext.eval.frechet_distance`) compares between generated and real videos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.shapes import fold
from .stats import bootstrap_ci, estimate

__all__ = ["FEATURES", "ShapesConsistency", "clipped_errors", "consistency", "drift_slope", "error_curve",
           "is_consistent", "shape_changed", "video_features", "video_metrics"]


@dataclass(frozen=True)
class ShapesConsistency:
    """Result of :func:`consistency` on one video.

    Attributes:
        errors: float64 ``[n]``: for each frame, the largest (over shapes) distance in pixels
            between the measured shape centre and the one predicted from two neighbouring frames
            (``inf`` where a shape is missing from one of the three frames).
        mass_change: float64 ``[n]``: for each frame, the largest (over shapes) relative change
            of the shape's mass (summed intensity) from its median over the frames showing it
            (1 where a shape is missing).
        num_shapes: shapes found (channels where some pixel reaches 0 in some frame).
        is_consistent: ``errors.max() <= atol`` and ``mass_change.max() <= mass_rtol``.
    """

    errors: Tensor
    mass_change: Tensor
    num_shapes: int
    is_consistent: bool


def _check_video(video: Tensor) -> None:
    if not isinstance(video, Tensor) or video.dim() != 4 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"video must be a [n, 3, H, W] tensor, got {shape}")


def consistency(video: Tensor, atol: float = 0.3, mass_rtol: float = 0.25, max_speed: float | None = None
                ) -> ShapesConsistency:
    """Score the physical consistency of a MovingShapes-like ``[n, 3, H, W]`` video, frame by frame.

    The metric, per channel holding a shape (a channel holds a shape if some pixel reaches 0):

    1. intensity ``I = clamp((x + 1) / 2, 0, 1)``; the shape's window is the bounding box of
       pixels with ``I >= 0.5``, grown by 1 pixel (haze elsewhere is ignored); its centre is the
       ``I``-weighted centroid in the window and its mass the summed ``I``;
    2. its half-extent per axis is half its longest chord (the largest row / column sum of
       ``I``), median over frames; this places the walls at ``[h - 0.5, W - 0.5 - h]``;
    3. each frame ``f >= 2`` is predicted from frames ``f-2, f-1`` (frames 0 and 1 backwards
       from ``f+2, f+1``): per axis the displacement ``d`` between the two is unfolded under
       three hypotheses — no bounce, bounce off the low wall, bounce off the high wall, keeping
       those with ``|d| <= max_speed`` — and the prediction ``fold(x[f-2] + 2 d)`` closest to
       the measured ``x[f]`` is kept;
    4. ``errors[f]`` is the Euclidean error of that prediction in pixels, max over shapes.

    Exact renders score below ~0.1 px (walls are estimated within ~0.05 px) and stay below
    0.25 px under N(0, 0.05²) pixel noise; ``atol = 0.3`` flags a missing or repeated frame
    (the data moves >= 0.5 px per frame) or a jump of a third of a pixel. ``max_speed`` defaults to
    ``W / 8`` pixels per frame (the dataset moves at most ``W / 16``). A frozen video is
    consistent (zero velocity). Frames that cannot be predicted (videos of fewer than 3 frames,
    frame 1 of a 3-frame video) get a zero position error.
    """
    _check_video(video)
    n, _, height, width = video.shape
    max_speed = min(height, width) / 8 if max_speed is None else max_speed
    intensity = ((video.detach().cpu().double().numpy() + 1) / 2).clip(0, 1)
    intensity = np.nan_to_num(intensity, nan=0.0)
    errors, mass_change, num_shapes = np.zeros(n), np.zeros(n), 0
    for c in range(3):
        if n == 0 or intensity[:, c].max() < 0.5:
            continue
        num_shapes += 1
        xy, mass, half = _measure(intensity[:, c])                             # (n, 2), (n,), (2,)
        typical = np.median(mass[mass > 0])                                   # a missing shape changes by 1
        mass_change = np.maximum(mass_change, np.abs(mass - typical) / typical)
        lo, hi = half - 0.5, np.array([width, height]) - 0.5 - half
        errors[2:] = np.maximum(errors[2:], _prediction_error(xy[:-2], xy[1:-1], xy[2:], lo, hi, max_speed))
        k = max(min(2, n - 2), 0)                                              # frames 0, 1 predicted backwards
        errors[:k] = np.maximum(errors[:k], _prediction_error(xy[2:2 + k], xy[1:1 + k], xy[:k], lo, hi, max_speed))
    ok = bool(errors.max(initial=0) <= atol and mass_change.max(initial=0) <= mass_rtol)
    return ShapesConsistency(torch.from_numpy(errors), torch.from_numpy(mass_change), num_shapes, ok)


def is_consistent(video: Tensor, **kwargs) -> bool:
    """True iff :func:`consistency` (same keywords) finds the video physically consistent."""
    return consistency(video, **kwargs).is_consistent


def _measure(intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid ``(n, 2)`` (x, y; NaN where the shape is missing), mass ``(n,)`` and median
    half-extent ``(2,)`` of the shape in one channel ``(n, H, W)``."""
    n, height, width = intensity.shape
    solid = intensity >= 0.5
    rows, cols = solid.any(2), solid.any(1)                                    # (n, H), (n, W)
    present = rows.any(1)
    # Window: bounding box of the solid pixels grown by one pixel.
    y0, y1 = rows.argmax(1) - 1, height - rows[:, ::-1].argmax(1) + 1
    x0, x1 = cols.argmax(1) - 1, width - cols[:, ::-1].argmax(1) + 1
    ys, xs = np.arange(height), np.arange(width)
    in_y = (ys >= y0[:, None]) & (ys < y1[:, None])
    in_x = (xs >= x0[:, None]) & (xs < x1[:, None])
    window = intensity * (in_y[:, :, None] & in_x[:, None, :] & present[:, None, None])
    mass = window.sum((1, 2))
    safe = np.where(present, mass, 1.0)
    xy = np.stack([window.sum(1) @ xs / safe, window.sum(2) @ ys / safe], 1)
    xy[~present] = np.nan
    half = np.stack([window.sum(2).max(1), window.sum(1).max(1)], 1) / 2      # longest row -> x extent
    return xy, mass, np.median(half[present], axis=0)


def _prediction_error(before: np.ndarray, last: np.ndarray, target: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                      max_speed: float) -> np.ndarray:
    """Distance ``(m,)`` from ``target`` to the position one frame after ``last`` (``before`` being
    one frame earlier), per axis the best of: no bounce, bounce off ``lo``, bounce off ``hi``
    between ``before`` and ``last`` (bounces only if the unfolded step is <= ``max_speed``).
    Infinite where the shape is missing from one of the frames.
    """
    d = np.stack([last - before, (2 * lo - last) - before, (2 * hi - last) - before])   # (3, m, 2) unfolded steps
    miss = np.abs(fold(before + 2 * d, lo, hi) - target)
    miss[1:][np.abs(d[1:]) > max_speed] = np.inf
    error = np.sqrt((miss.min(0) ** 2).sum(-1))
    missing = np.isnan(before).any(-1) | np.isnan(last).any(-1) | np.isnan(target).any(-1)
    return np.where(missing, np.inf, error)


def clipped_errors(video: Tensor) -> np.ndarray:
    """Per-frame consistency error in pixels, ``inf`` (missing shape) and large values clipped to the
    frame width. Videos of fewer than 3 frames cannot be checked (the checker scores them 0): they
    get the cap on every frame, i.e. count as failures (the data has no such videos)."""
    cap = float(video.shape[-1])
    if video.shape[0] < 3:
        return np.full(video.shape[0], cap)
    errors = consistency(video).errors.numpy()
    return np.minimum(np.nan_to_num(errors, nan=cap, posinf=cap), cap)


def shape_changed(video: Tensor) -> bool:
    """Whether the set of colour channels holding a solid shape (some pixel at intensity >= 0.5, as
    in :func:`consistency`) differs between frames of a ``[n, 3, H, W]`` video: a shape faded
    below half intensity or vanished, or one appeared. Never true of the data (shapes keep their
    colour and mass)."""
    _check_video(video)
    solid = (video.detach() >= 0).flatten(2).any(2)                            # [n, 3]: intensity >= 0.5
    return bool((solid != solid[:1]).any())


def video_metrics(videos: Sequence[Tensor]) -> dict[str, np.ndarray]:
    """Per-video arrays: strict verdict, median clipped error, fraction of frames within 1 px,
    whether a shape changed (see the module docstring), length."""
    out: dict[str, list] = {"consistent": [], "median_error": [], "frac_frames_le_1px": [], "shape_changed": [],
                            "length": []}
    for v in videos:
        result = consistency(v)
        errors = clipped_errors(v)
        out["consistent"].append(float(result.is_consistent and v.shape[0] >= 3))
        out["median_error"].append(float(np.median(errors)))
        out["frac_frames_le_1px"].append(float(np.mean(errors <= 1.0)))
        out["shape_changed"].append(float(shape_changed(v)))
        out["length"].append(float(v.shape[0]))
    return {k: np.asarray(v) for k, v in out.items()}


FEATURES = ("shapes", "mass", "speed", "acceleration", "mass_variation", "haze")


def video_features(video: Tensor) -> np.ndarray:
    """Statistics of one ``[n, 3, H, W]`` video in ``[-1, 1]`` (see :data:`FEATURES`), averaged over its
    shapes (one per channel): the number of channels holding a shape, the shape's mass (pixels),
    its mean speed and acceleration (pixels/frame, from weighted centroids), the spread of its
    mass over frames (relative) and the fraction of pixels that are neither background nor shape."""
    x = ((video.detach().double().numpy() + 1) / 2).clip(0, 1)                 # (n, 3, H, W) intensity
    n, _, h, w = x.shape
    haze = float(((x > 0.15) & (x < 0.85)).mean())
    weight = np.clip((x - 0.25) / 0.75, 0, 1)                                   # haze below 0.25 ignored
    ys, xs = np.arange(h), np.arange(w)
    stats = []
    for c in range(3):
        if x[:, c].max() < 0.5:
            continue
        mass = weight[:, c].sum((1, 2))                                         # (n,)
        present = mass > 0.5
        if not present.any():  # only faint traces in this channel: no shape
            continue
        safe = np.where(present, mass, 1.0)
        centre = np.stack([weight[:, c].sum(1) @ xs, weight[:, c].sum(2) @ ys], 1) / safe[:, None]
        step = np.diff(centre, axis=0)
        both = present[1:] & present[:-1]
        speed = np.linalg.norm(step[both], axis=1).mean() if both.any() else 0.0
        both2 = both[1:] & both[:-1]
        accel = np.linalg.norm(np.diff(step, axis=0)[both2], axis=1).mean() if both2.any() else 0.0
        m = mass[present]
        stats.append([m.mean(), speed, accel, m.std() / max(m.mean(), 1e-9)])
    per_shape = np.mean(stats, axis=0) if stats else np.zeros(4)
    return np.array([len(stats), *per_shape, haze])


def error_curve(videos: Sequence[Tensor], max_index: int, reps: int, seed: int) -> dict[str, list]:
    """Per frame index ``0..max_index-1``: the mean clipped error over the videos that have that frame,
    its bootstrap interval (over those videos) and how many videos it averages."""
    errors = [clipped_errors(v) for v in videos]
    rng = np.random.default_rng(seed)
    mean, lo, hi, count = [], [], [], []
    for f in range(max_index):
        values = np.array([e[f] for e in errors if e.shape[0] > f])
        count.append(int(values.size))
        if values.size == 0:
            mean.append(math.nan), lo.append(math.nan), hi.append(math.nan)
            continue
        a, b = bootstrap_ci(lambda i: values[i].mean(), values.size, reps, rng)
        mean.append(float(values.mean())), lo.append(a), hi.append(b)
    return {"mean": mean, "ci95_low": lo, "ci95_high": hi, "videos": count}


def drift_slope(videos: Sequence[Tensor], reps: int, seed: int, first: int = 2) -> dict:
    """Least-squares slope (px per frame) of the clipped error against the frame index, pooled over
    the videos' frames ``>= first`` (earlier frames are predicted backwards), bootstrap over videos."""
    errors = [clipped_errors(v) for v in videos]

    def slope(idx: np.ndarray) -> float:
        f = np.concatenate([np.arange(first, errors[i].shape[0]) for i in idx])
        e = np.concatenate([errors[i][first:] for i in idx])
        if f.size < 2 or np.ptp(f) == 0:
            return math.nan
        return float(np.polyfit(f, e, 1)[0])

    rng = np.random.default_rng(seed)
    return estimate(slope(np.arange(len(errors))), bootstrap_ci(slope, len(errors), reps, rng))
