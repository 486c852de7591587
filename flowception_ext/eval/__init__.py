"""Evaluation: checkers and probes of the toy datasets, motion statistics, the Fréchet distance,
and bootstrap and paired intervals.

* :mod:`~flowception_ext.eval.toy` — ToyColoring: :func:`check_manifold` (rule by rule), the
  ring-offset probes :func:`ring_offsets` and :func:`fit_stride_offsets`, the stride-rule
  diagnosis :func:`stride_aliased`, and the
  best possible clean-frame estimate :func:`bayes_clean_estimate`;
* :mod:`~flowception_ext.eval.shapes` — MovingShapes: :func:`consistency`, per-video metrics and
  motion statistics, error curves over frame indices;
* :mod:`~flowception_ext.eval.stats` — :func:`frechet_distance`, :func:`bootstrap_ci`,
  :func:`paired_difference`, :func:`summarise`;
* :mod:`~flowception_ext.eval.i3d` — :class:`I3D` with DeepMind's Kinetics-400 weights
  (:func:`fetch_i3d`, ``flowception fetch i3d``);
* :mod:`~flowception_ext.eval.metrics` — :func:`fvd`, :func:`i3d_features`, :func:`psnr`, :func:`ssim`.
"""

from .shapes import (FEATURES, ShapesConsistency, clipped_errors, consistency, drift_slope, error_curve, is_consistent,
                     shape_changed, video_features, video_metrics)
from .i3d import I3D, fetch_i3d, prepare_videos
from .metrics import fvd, i3d_features, psnr, ssim
from .stats import bootstrap_ci, estimate, frechet_distance, paired_difference, standardiser, summarise
from .toy import (MANIFOLD_RULES, ManifoldCheck, bayes_clean_estimate, check_manifold, check_manifold_batch,
                  fit_stride_offsets, frame_ring_misfit, is_on_manifold, ring_offsets, stride_aliased)

__all__ = [
    "MANIFOLD_RULES", "ManifoldCheck", "bayes_clean_estimate", "check_manifold", "check_manifold_batch",
    "fit_stride_offsets", "frame_ring_misfit", "is_on_manifold", "ring_offsets", "stride_aliased",
    "FEATURES", "ShapesConsistency", "clipped_errors", "consistency", "drift_slope", "error_curve", "is_consistent",
    "shape_changed", "video_features", "video_metrics",
    "I3D", "fetch_i3d", "prepare_videos", "fvd", "i3d_features", "psnr", "ssim",
    "bootstrap_ci", "estimate", "frechet_distance", "paired_difference", "standardiser", "summarise",
]
