"""MovingShapes: shapes moving at constant velocity and bouncing off the walls, and a checker.

Each video (default 32x32 RGB, 8-48 frames, uniform) holds 1-3 shapes, squares or discs. Shape
``k`` lives alone in one colour channel (red, green or blue), so shapes never occlude each
other (overlaps mix colours) and each one can be measured exactly from its own channel.
A channel is ``-1`` outside its shape and ``+1`` inside, anti-aliased at the edges (exact box
coverage for squares, a 1-pixel ramp for discs), so sub-pixel positions are visible.

Physics: in pixel coordinates (pixel centres at 0..W-1, the image spans [-0.5, W-0.5]) a shape
of half-extent ``h`` has its centre in ``[h - 0.5, W - 0.5 - h]`` and moves as
``fold(p0 + v t)``, the fold reflecting it off the walls (an elastic bounce at any sub-frame
time). Item ``i`` is a function of ``(seed, i)`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .base import VideoDataset, hash_uniform, item_rng

__all__ = ["MovingShapes", "ShapesConsistency", "consistency", "is_consistent"]


class MovingShapes(VideoDataset):
    """The MovingShapes dataset (see the module docstring): ``[n, 3, H, W]`` videos in ``[-1, 1]``.

    Args:
        num_videos: number of items.
        seed: item ``i`` is a function of ``(seed, i)``.
        size: ``H = W`` of the frames (>= 16).
        min_length, max_length: lengths are uniform in ``[min_length, max_length]``.
        max_shapes: each video has 1..max_shapes shapes (at most 3, one per channel).
        speed: range of speeds in pixels per frame at size 32 (scaled with the size).
    """

    def __init__(
        self,
        num_videos: int = 4096,
        seed: int = 0,
        size: int = 32,
        min_length: int = 8,
        max_length: int = 48,
        max_shapes: int = 3,
        speed: tuple[float, float] = (0.5, 2.0),
    ) -> None:
        if num_videos < 0:
            raise ValueError(f"num_videos must be >= 0, got {num_videos}")
        if size < 16:
            raise ValueError(f"size must be >= 16, got {size}")
        if not 1 <= min_length <= max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
        if not 1 <= max_shapes <= 3:
            raise ValueError(f"max_shapes must be in 1..3 (one shape per RGB channel), got {max_shapes}")
        if not 0 <= speed[0] <= speed[1]:
            raise ValueError(f"speed must be a range (low, high) with 0 <= low <= high, got {speed}")
        self.seed = seed
        self.size = size
        self.max_shapes = max_shapes
        self.speed = (speed[0] * size / 32, speed[1] * size / 32)
        u = hash_uniform(seed, 0, np.arange(num_videos))
        self._lengths = (min_length + np.floor(u * (max_length - min_length + 1))).astype(int).tolist()

    @property
    def lengths(self) -> list[int]:
        return self._lengths

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def _load(self, index: int) -> Tensor:
        rng = item_rng(self.seed, 1, index)
        n, size = self._lengths[index], self.size
        t = np.arange(n)
        video = -np.ones((n, 3, size, size))
        channels = rng.permutation(3)[: rng.integers(1, self.max_shapes + 1)]
        for c in channels:
            is_disc = rng.random() < 0.5
            half = rng.uniform(0.08, 0.15) * size if is_disc else rng.uniform(0.075, 0.15) * size
            lo, hi = half - 0.5, size - 0.5 - half
            angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(*self.speed)
            start = rng.uniform(lo, hi, 2)
            velocity = speed * np.array([np.cos(angle), np.sin(angle)])
            xy = fold(start + velocity * t[:, None], lo, hi)                   # (n, 2) centre (x, y)
            video[:, c] = 2 * _coverage(xy, half, is_disc, size) - 1
        return torch.from_numpy(video).float()


def fold(u: np.ndarray, lo: float | np.ndarray, hi: float | np.ndarray) -> np.ndarray:
    """Reflect unbounded positions ``u`` into ``[lo, hi]`` (elastic bounces off both walls)."""
    span = np.maximum(hi - lo, 1e-9)
    phase = np.mod(u - lo, 2 * span)
    return lo + np.where(phase > span, 2 * span - phase, phase)


def _coverage(xy: np.ndarray, half: float, is_disc: bool, size: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape centred at ``xy[f]``: ``(n, size, size)``."""
    pix = np.arange(size, dtype=np.float64)
    dx = pix[None, :] - xy[:, 0:1]                                              # (n, W)
    dy = pix[None, :] - xy[:, 1:2]                                              # (n, H)
    if is_disc:
        dist = np.sqrt(dy[:, :, None] ** 2 + dx[:, None, :] ** 2)
        return np.clip(half + 0.5 - dist, 0, 1)
    # Exact overlap of pixel [p - 0.5, p + 0.5] with [centre - half, centre + half], per axis.
    cx = np.clip(np.minimum(dx + 0.5, half) - np.maximum(dx - 0.5, -half), 0, 1)
    cy = np.clip(np.minimum(dy + 0.5, half) - np.maximum(dy - 0.5, -half), 0, 1)
    return cy[:, :, None] * cx[:, None, :]


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
    if not isinstance(video, Tensor) or video.dim() != 4 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"video must be a [n, 3, H, W] tensor, got {shape}")
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
