"""Datasets of clean videos, collation into PackedVideos, and a frame-budget batch sampler."""

from .base import VideoDataset, check_video, collate_videos
from .shapes import MovingShapes, ShapesConsistency, consistency, is_consistent
from .toy import ManifoldCheck, ToyColoring, check_manifold, check_manifold_batch, is_on_manifold

__all__ = [
    "VideoDataset", "check_video", "collate_videos",
    "MovingShapes", "ShapesConsistency", "consistency", "is_consistent",
    "ToyColoring", "ManifoldCheck", "check_manifold", "check_manifold_batch", "is_on_manifold",
]
