"""What every dataset shares: the item contract, clean-video checks, collation and seeding.

A dataset item is one clean video, a float32 tensor ``[n, C, H, W]`` with ``n >= 1`` finite
frames. Every dataset exposes ``lengths`` (frames per item, known without decoding where the
format allows), ``frame_shape`` (``(C, H, W)``), ``__len__`` and ``__getitem__``.

Items are looked up as ``dataset[index]`` or ``dataset[index, epoch]``. A dataset whose items
are random crops or clips (:class:`~flowception_ext.data.VideoFolder`) draws them from
``(seed, epoch, index)``, so the trainer passes the epoch and every DataLoader worker, and every
resumed run, loads the same item; the synthetic datasets ignore the epoch.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Sequence

import operator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..packing import PackedVideos

__all__ = ["VideoDataset", "check_video", "collate_videos"]


def check_video(video: Tensor, item: str, frame_shape: Sequence[int] | None = None) -> Tensor:
    """Check that ``video`` is a clean ``[n, C, H, W]`` video; returns it unchanged.

    Raises ValueError naming ``item`` (a file path or ``"item 7"``) if it is not 4-D, has no
    frames, has a frame shape other than ``frame_shape`` (when given) or holds NaN/inf.
    """
    if not isinstance(video, Tensor) or video.dim() != 4:
        shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"{item}: a video must be a [n, C, H, W] tensor, got {shape}")
    if video.shape[0] == 0:
        raise ValueError(f"{item}: empty video (0 frames)")
    if frame_shape is not None and tuple(video.shape[1:]) != tuple(frame_shape):
        raise ValueError(f"{item}: frame shape {tuple(video.shape[1:])} differs from the expected "
                         f"{tuple(frame_shape)}")
    if video.is_floating_point() and not torch.isfinite(video).all():
        raise ValueError(f"{item}: video holds NaN or inf pixels")
    return video


def collate_videos(videos: Sequence[Tensor]) -> PackedVideos:
    """Pack a list of clean videos ``[n_i, C, H, W]`` (one batch) into :class:`PackedVideos`.

    Use as a DataLoader's ``collate_fn``. All videos must share the frame shape and dtype.
    """
    videos = list(videos)
    for i, v in enumerate(videos):
        check_video(v, f"batch item {i}", videos[0].shape[1:] if videos else None)
    return PackedVideos.from_list(videos)


class VideoDataset(Dataset):
    """Base of the datasets: bounds-checks the index and checks every loaded video.

    Subclasses implement ``lengths``, ``frame_shape``, ``_load(index)`` and may override
    ``_describe(index)`` (how an item is named in errors; a file path for folders), and
    ``_load_epoch(index, epoch)`` when an item depends on the epoch (random clips or crops).
    """

    @property
    @abstractmethod
    def lengths(self) -> list[int]:
        """Frames of each item."""

    @property
    @abstractmethod
    def frame_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every frame."""

    @abstractmethod
    def _load(self, index: int) -> Tensor: ...

    def _load_epoch(self, index: int, epoch: int) -> Tensor:
        """Item ``index`` as drawn in ``epoch`` (default: the same in every epoch)."""
        return self._load(index)

    def _describe(self, index: int) -> str:
        return f"{type(self).__name__} item {index}"

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, key: int | tuple[int, int]) -> Tensor:
        """``dataset[index]`` (epoch 0) or ``dataset[index, epoch]``."""
        index, epoch = key if isinstance(key, tuple) and len(key) == 2 else (key, 0)
        try:
            index, epoch = operator.index(index), operator.index(epoch)
        except TypeError:
            raise TypeError(f"{type(self).__name__} keys are an int index or an (index, epoch) pair of ints, "
                            f"got {key!r}") from None
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{type(self).__name__} index {index} out of range for {n} items")
        if epoch < 0:
            raise IndexError(f"{type(self).__name__} epoch must be >= 0, got {epoch}")
        index %= n
        return check_video(self._load_epoch(index, epoch), self._describe(index), self.frame_shape)


# ---- seeding: item i is a function of (seed, i) only ----------------------------------------

_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised over uint64 (wrap-around arithmetic is intended)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, stream: int, index: np.ndarray) -> np.ndarray:
    """Uniform floats in ``[0, 1)``, one per index, each a function of ``(seed, stream, index)``.

    Lets a dataset compute every item's length at once without building one RNG per item.
    """
    key = _splitmix64(np.array([(seed * 0x9E3779B97F4A7C15 + stream) & _MASK64], dtype=np.uint64))
    x = _splitmix64(np.asarray(index, dtype=np.uint64) ^ key)
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def item_rng(seed: int, stream: int, index: int, epoch: int | None = None) -> np.random.Generator:
    """The RNG drawing the content of item ``index``: a function of ``(seed, stream, index)``
    only, or of ``(seed, stream, epoch, index)`` when ``epoch`` is given."""
    key = [seed & _MASK64, stream, index] if epoch is None else [seed & _MASK64, stream, epoch, index]
    return np.random.default_rng(key)
