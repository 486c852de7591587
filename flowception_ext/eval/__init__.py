"""Evaluation: checkers and probes of the toy datasets, motion statistics, the Fréchet distance,
and bootstrap and paired intervals.

* :mod:`~flowception_ext.eval.toy` — ToyColoring: :func:`check_manifold` (rule by rule), the
  ring-offset probes :func:`ring_offsets` and :func:`fit_stride_offsets`;
* :mod:`~flowception_ext.eval.shapes` — MovingShapes: :func:`consistency`, per-video metrics and
  motion statistics, error curves over frame indices;
* :mod:`~flowception_ext.eval.stats` — :func:`frechet_distance`, :func:`bootstrap_ci`,
  :func:`paired_difference`, :func:`summarise`.
"""

from .shapes import (FEATURES, ShapesConsistency, clipped_errors, consistency, drift_slope, error_curve, is_consistent,
                     video_features, video_metrics)
from .stats import bootstrap_ci, estimate, frechet_distance, paired_difference, standardiser, summarise
from .toy import (MANIFOLD_RULES, ManifoldCheck, check_manifold, check_manifold_batch, fit_stride_offsets,
                  frame_ring_misfit, is_on_manifold, ring_offsets)

__all__ = [
    "MANIFOLD_RULES", "ManifoldCheck", "check_manifold", "check_manifold_batch", "fit_stride_offsets",
    "frame_ring_misfit", "is_on_manifold", "ring_offsets",
    "FEATURES", "ShapesConsistency", "clipped_errors", "consistency", "drift_slope", "error_curve", "is_consistent",
    "video_features", "video_metrics",
    "bootstrap_ci", "estimate", "frechet_distance", "paired_difference", "standardiser", "summarise",
]
