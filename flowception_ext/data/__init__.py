"""Datasets of clean videos, collation into PackedVideos, and a frame-budget batch sampler.

Every dataset yields float32 videos ``[n, C, H, W]`` (``n >= 1``, finite) and exposes
``lengths``, ``frame_shape``, ``__len__`` and ``__getitem__`` (``dataset[index]`` or
``dataset[index, epoch]``); :func:`collate_videos` packs a list of them,
:class:`FrameBudgetBatchSampler` groups them by a total frame budget. :class:`VideoFolder`
decodes real movies lazily into clips (resize and crop, strides, random windows, variable
lengths); :mod:`~flowception_ext.data.sample_clips` provides real test clips. The toys'
checkers are in :mod:`flowception_ext.eval`.
"""

from .base import VideoDataset, check_video, collate_videos
from .folders import TensorFolder, VideoFolder
from .sampler import FrameBudgetBatchSampler
from .shapes import MovingShapes
from .toy import ToyColoring

__all__ = [
    "VideoDataset", "check_video", "collate_videos", "FrameBudgetBatchSampler",
    "ToyColoring", "MovingShapes",
    "TensorFolder", "VideoFolder",
]
