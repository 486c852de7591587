"""The baselines' training states on the Flowception backbone (docs/algorithm.md §8):
full-sequence flow matching and autoregressive teacher forcing. Their samplers live with
Flowception's in :mod:`flowception_ext.sampling`."""

from __future__ import annotations

import warnings

from .training import make_autoregressive_state, make_full_sequence_state

__all__ = ["make_autoregressive_state", "make_full_sequence_state"]

_MOVED = {"sample_full_sequence", "sample_autoregressive", "BaselineOutput"}


def __getattr__(name: str):
    # The samplers moved to flowception_ext.sampling; the old import path keeps working.
    if name in _MOVED:
        warnings.warn(f"flowception_ext.baselines.{name} moved to flowception_ext.sampling"
                      f"{'.SampleOutput' if name == 'BaselineOutput' else '.' + name}", DeprecationWarning, stacklevel=2)
        from .. import sampling
        return sampling.SampleOutput if name == "BaselineOutput" else getattr(sampling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
