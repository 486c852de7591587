"""MovingShapes: shapes moving at constant velocity and bouncing off the walls.

Each video (default 32x32 RGB, 8-48 frames, uniform) holds 1-3 shapes, squares or discs. Shape
``k`` lives alone in one colour channel (red, green or blue), so shapes never occlude each
other (overlaps mix colours) and each one can be measured exactly from its own channel.
A channel is ``-1`` outside its shape and ``+1`` inside, anti-aliased at the edges (exact box
coverage for squares, a 1-pixel ramp for discs), so sub-pixel positions are visible.

Physics: in pixel coordinates (pixel centres at 0..W-1, the image spans [-0.5, W-0.5]) a shape
of half-extent ``h`` has its centre in ``[h - 0.5, W - 0.5 - h]`` and moves as
``fold(p0 + v t)``, the fold reflecting it off the walls (an elastic bounce at any sub-frame
time). Item ``i`` is a function of ``(seed, i)`` only. Its consistency checker is
:func:`flowception_ext.eval.consistency`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import VideoDataset, hash_uniform, item_rng

__all__ = ["MovingShapes", "fold"]


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
