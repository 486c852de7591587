"""ToyColoring: the length-modelling toy of the Flowception paper (App. F).

Each video is a sequence of 3x3 RGB frames:

* the 8 border pixels, read clockwise from the top-left corner (the *ring*), carry a linear
  colour gradient ``c0 + (c1 - c0) * k / 7`` for ``k = 0..7`` starting at some ring offset;
* from one frame to the next the gradient rotates around the ring by a fixed stride of 1, 2 or
  3 pixels, in a fixed direction (clockwise or counter-clockwise), both drawn per video;
* the centre pixel keeps one colour for the whole video;
* the length is one of 15, 20, 25, 30 frames, uniformly by default (``length_weights``).

Colours are uniform in ``[-1, 1]^3``; ``c1`` is redrawn until it differs from ``c0`` by at least
``min_contrast`` in some channel, so the rotation is always visible. Item ``i`` is a function of
``(seed, i)`` only.

Two motions:

* ``motion="stride"`` (default): the rotation stride is an integer in {1, 2, 3}, independent of
  the length — the rules are exactly checkable frame by frame, but nothing in the frames tells
  how long the video is, so a model must learn the length distribution blind. The ring has 8
  slots, so the motion aliases: the offsets of two frames ``g`` apart differ by ``s g mod 8``,
  which fixes ``g`` only modulo 8 (``|s|`` = 1, 3) or 4 (``|s|`` = 2), and strides ``s`` and
  ``s + 4`` (1 and -3, 2 and -2, 3 and -1) agree on every other frame.
* ``motion="rotation"``: as in the paper, the gradient moves with the constant speed that makes
  exactly one full turn over the video (``8 / n`` ring pixels per frame, a continuous sawtooth
  ``c0 + (c1 - c0) k / 8`` at fractional positions), so the motion tells the length — the
  construction of App. F, where the speed is chosen "to achieve an integer number of rotations".

Both keep the centre constant (the paper's centre pixel makes one jump between two values).
Its checker and probes are in :mod:`flowception_ext.eval.toy`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .base import VideoDataset, hash_uniform, item_rng

__all__ = ["MOTIONS", "RAMP", "RING_COLS", "RING_ROWS", "TOY_LENGTHS", "TOY_STRIDES", "ToyColoring"]

# Ring of border pixels, clockwise from the top-left corner: (row, column).
RING_ROWS = np.array([0, 0, 0, 1, 2, 2, 2, 1])
RING_COLS = np.array([0, 1, 2, 2, 2, 1, 0, 0])
RAMP = np.arange(8) / 7.0  # gradient weight of ring slot k (k = 0 is colour c0)

TOY_LENGTHS = (15, 20, 25, 30)
TOY_STRIDES = (1, 2, 3)
MOTIONS = ("stride", "rotation")


def _sawtooth(offsets: np.ndarray) -> np.ndarray:
    """Gradient weight ``k / 8`` of each ring pixel when colour ``c0`` sits at (fractional) ring
    position ``offsets[f]``: ``(n,) -> (n, 8)``."""
    return ((np.arange(8)[None, :] - offsets[:, None]) % 8) / 8


class ToyColoring(VideoDataset):
    """The ToyColoring dataset (see the module docstring): ``[n, 3, 3, 3]`` videos in ``[-1, 1]``.

    Args:
        num_videos: number of items.
        seed: item ``i`` is a function of ``(seed, i)``.
        allowed_lengths: the possible lengths.
        length_weights: probability of each allowed length (default uniform).
        strides: possible rotation strides, in ring pixels per frame.
        directions: possible rotation directions (+1 clockwise, -1 counter-clockwise).
        min_contrast: least max-channel difference between the gradient's end colours.
        motion: ``"stride"`` (integer strides, length-independent) or ``"rotation"`` (one full
            turn over the video: the motion tells the length; see the module docstring).
    """

    def __init__(
        self,
        num_videos: int = 4096,
        seed: int = 0,
        allowed_lengths: Sequence[int] = TOY_LENGTHS,
        length_weights: Sequence[float] | None = None,
        strides: Sequence[int] = TOY_STRIDES,
        directions: Sequence[int] = (1, -1),
        min_contrast: float = 1.0,
        motion: str = "stride",
    ) -> None:
        if motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
        if num_videos < 0:
            raise ValueError(f"num_videos must be >= 0, got {num_videos}")
        if not allowed_lengths or min(allowed_lengths) < 1:
            raise ValueError(f"allowed_lengths must be positive lengths, got {allowed_lengths}")
        if not strides or not set(strides) <= {1, 2, 3}:
            raise ValueError(f"strides must be a non-empty subset of (1, 2, 3), got {strides}")
        if not directions or not set(directions) <= {1, -1}:
            raise ValueError(f"directions must be a non-empty subset of (1, -1), got {directions}")
        if not 0 < min_contrast <= 2:
            raise ValueError(f"min_contrast must be in (0, 2], got {min_contrast}")
        weights = np.ones(len(allowed_lengths)) if length_weights is None else np.asarray(length_weights, float)
        if weights.shape != (len(allowed_lengths),) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"length_weights must be {len(allowed_lengths)} non-negative weights, got {length_weights}")
        self.seed = seed
        self.allowed_lengths = tuple(int(n) for n in allowed_lengths)
        self.strides = tuple(strides)
        self.directions = tuple(directions)
        self.min_contrast = float(min_contrast)
        self.motion = motion
        cdf = np.cumsum(weights / weights.sum())
        u = hash_uniform(seed, 0, np.arange(num_videos))
        pick = np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)
        self._lengths = [self.allowed_lengths[k] for k in pick]

    @property
    def lengths(self) -> list[int]:
        return self._lengths

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (3, 3, 3)

    def _load(self, index: int) -> Tensor:
        rng = item_rng(self.seed, 1, index)
        n = self._lengths[index]
        stride = rng.choice(self.strides) * rng.choice(self.directions)
        c0 = rng.uniform(-1, 1, 3)
        c1 = rng.uniform(-1, 1, 3)
        while np.abs(c1 - c0).max() < self.min_contrast:
            c1 = rng.uniform(-1, 1, 3)
        centre = rng.uniform(-1, 1, 3)
        offset0 = rng.integers(8)

        if self.motion == "rotation":  # one full turn over the video, at fractional positions
            offsets = offset0 + rng.uniform(0, 1) + np.sign(stride) * 8.0 * np.arange(n) / n
            ring = c0 + (c1 - c0) * _sawtooth(offsets)[..., None]      # (n, 8, 3)
        else:
            offsets = offset0 + stride * np.arange(n)                 # (n,) ring slot of colour c0
            k = (np.arange(8)[None, :] - offsets[:, None]) % 8        # (n, 8) gradient slot of each ring pixel
            ring = c0 + (c1 - c0) * RAMP[k][..., None]               # (n, 8, 3)
        video = np.empty((n, 3, 3, 3))
        video[:, :, RING_ROWS, RING_COLS] = ring.transpose(0, 2, 1)
        video[:, :, 1, 1] = centre
        return torch.from_numpy(video).float()

    @property
    def rules(self) -> dict:
        """The keywords that check a video against this dataset's lengths, strides, directions and
        motion: ``flowception_ext.eval.check_manifold(video, **dataset.rules)``."""
        return dict(allowed_lengths=self.allowed_lengths, strides=self.strides, directions=self.directions,
                    motion=self.motion)
