"""Helpers that attach the Python side of a compiled op (fake kernel, autograd, flop formula)
only when the compiled library is loaded."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import register_flop_formula

from .. import _extension


def compiled_op(name: str) -> Any:
    """``torch.ops.flowception.<name>`` when the extension is loaded, else ``None``."""
    return getattr(torch.ops.flowception, name) if _extension.available() else None


def register(name: str, *, fake: Callable, flops: Callable[..., int], backward: Callable | None = None,
             setup_context: Callable | None = None) -> None:
    """Register the fake kernel, the flop formula and (optionally) the autograd of ``flowception::name``."""
    if not _extension.available():
        return
    qualname = f"flowception::{name}"
    torch.library.register_fake(qualname)(fake)
    if backward is not None:
        torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    register_flop_formula(getattr(torch.ops.flowception, name))(flops)


def draw_seed(generator: torch.Generator | None) -> int:
    """A 63-bit seed from ``generator`` (on any device), or from the global CPU generator."""
    device = "cpu" if generator is None else generator.device
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, dtype=torch.int64, device=device))


def as_op_seed(seed: int) -> int:
    """``seed`` as the int64 the op schema takes: any int in [-2^63, 2^64), where ``s`` and
    ``s - 2^64`` name the same 64-bit Philox key."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must be in [-2**63, 2**64), got {seed}")
    return seed - 2**64 if seed >= 2**63 else seed
