"""Baselines on the Flowception backbone (SPEC §8): full-sequence flow matching and
autoregressive generation (frame-causal with a KV cache, or bidirectional without)."""

from ._common import BaselineOutput
from .autoregressive import sample_autoregressive
from .full_sequence import sample_full_sequence

__all__ = ["BaselineOutput", "sample_autoregressive", "sample_full_sequence"]
