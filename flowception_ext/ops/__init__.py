"""The ops of flowception_ext, with typed wrappers.

Each op is ``torch.ops.flowception.<name>`` (our kernels; schemas in ``csrc/ops.cpp``) and a
stock-PyTorch implementation (:mod:`flowception_ext.ops.stock`); the wrapper here runs the one
that :func:`select_backend` picks for the tensors' device. The pure-PyTorch twins in
:mod:`flowception_ext.ops.reference` define what every backend must compute.
"""

from . import reference, stock
from .backend import BACKENDS, select_backend, use_backend
from .adaln import adaln_modulate, gated_residual, gated_residual_adaln
from .attention import local_frame_attention, local_frame_attention_flops
from .ragged import ragged_insert, ragged_insert_bytes, ragged_strip, ragged_strip_bytes

__all__ = [
    "reference", "stock", "BACKENDS", "select_backend", "use_backend",
    "ragged_insert", "ragged_strip", "ragged_insert_bytes", "ragged_strip_bytes",
    "adaln_modulate", "gated_residual", "gated_residual_adaln",
    "local_frame_attention", "local_frame_attention_flops",
]
