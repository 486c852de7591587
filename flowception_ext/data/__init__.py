"""Datasets of clean videos, collation into PackedVideos, and a frame-budget batch sampler.

Every dataset yields float32 videos ``[n, C, H, W]`` (``n >= 1``, finite) and exposes
``lengths``, ``frame_shape``, ``__len__`` and ``__getitem__``; :func:`collate_videos` packs a
list of them, :class:`FrameBudgetBatchSampler` groups them by a total frame budget.
"""

from .base import VideoDataset, check_video, collate_videos
from .folders import TensorFolder, VideoFolder
from .sampler import FrameBudgetBatchSampler
from .shapes import MovingShapes, ShapesConsistency, consistency, is_consistent
from .toy import (MANIFOLD_RULES, ManifoldCheck, ToyColoring, check_manifold, check_manifold_batch, fit_stride_offsets,
                  frame_ring_misfit, is_on_manifold, ring_offsets)

__all__ = [
    "VideoDataset", "check_video", "collate_videos", "FrameBudgetBatchSampler",
    "ToyColoring", "ManifoldCheck", "MANIFOLD_RULES", "check_manifold", "check_manifold_batch", "fit_stride_offsets",
    "frame_ring_misfit", "is_on_manifold", "ring_offsets",
    "MovingShapes", "ShapesConsistency", "consistency", "is_consistent",
    "TensorFolder", "VideoFolder",
]
