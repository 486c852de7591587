"""Sampling: Flowception's sampler and the baselines' samplers, under one convention.

Every sampler is called as ``sampler(model, context=None, *, num_videos=None, ..., labels=None,
generator=None, frame_shape=None, progress=True, callback=None)`` and returns a
:class:`SampleOutput`:

* :func:`sample` — Flowception: coupled denoising and frame insertion (learned rates, or a fixed
  insertion order for the ablation);
* :func:`sample_full_sequence` — full-sequence flow matching at a length fixed in advance;
* :func:`sample_autoregressive` — one frame at a time, with a KV cache for frame-causal models.
"""

from .autoregressive import sample_autoregressive
from .common import Context, SampleHistory, SampleOutput, SamplerState
from .flowception import INSERTION_MODES, ORDERS, guided_prediction, sample
from .full_sequence import sample_full_sequence

__all__ = ["Context", "INSERTION_MODES", "ORDERS", "SampleHistory", "SampleOutput", "SamplerState", "guided_prediction",
           "sample", "sample_autoregressive", "sample_full_sequence"]
