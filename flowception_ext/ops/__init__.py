"""The compiled ops of flowception_ext, with typed wrappers.

Each op is ``torch.ops.flowception.<name>`` (schemas in ``csrc/ops.cpp``) with a wrapper here
that falls back to its pure-PyTorch twin in :mod:`flowception_ext.ops.reference` when the
extension is not available.
"""

from . import reference
from .adaln import adaln_modulate, gated_residual, gated_residual_adaln
from .attention import local_frame_attention, local_frame_attention_flops
from .ragged import ragged_insert, ragged_insert_bytes, ragged_strip, ragged_strip_bytes

__all__ = [
    "reference",
    "ragged_insert", "ragged_strip", "ragged_insert_bytes", "ragged_strip_bytes",
    "adaln_modulate", "gated_residual", "gated_residual_adaln",
    "local_frame_attention", "local_frame_attention_flops",
]
